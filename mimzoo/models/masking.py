"""Random masking rules of the upstream codes, as pure functions of an explicit `noise` draw.

mask convention everywhere: 1 / True = removed (hidden from the encoder, predicted).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


def mae_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's `random_masking`: keep the `int(L * (1 - ratio))` patches with the smallest noise.

    Returns ids_keep (B, K) in ascending-noise order (the order MAE feeds the encoder), mask (B, L) float and
    ids_restore (B, L). MIMIC uses this rule too, so at ratio 0.9 it keeps 19 of 196 patches where CroCo keeps 20.
    """
    B, L = noise.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, L, device=noise.device)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def croco_mask(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """CroCo's `RandomMask`: bool (B, L), True where `argsort(noise)` is below `int(ratio * L)`."""
    return torch.argsort(noise, dim=1) < int(mask_ratio * noise.shape[1])


def visible_ids(mask: torch.Tensor, num_visible: int | None = None) -> torch.Tensor:
    """(B, K) indices of the visible (mask == 0) patches in increasing patch order (CroCo's `x[~mask]`).

    Pass `num_visible` in training steps: it avoids reading the count back from the device.
    """
    visible = ~mask.bool().flatten(1)
    if num_visible is None:
        counts = visible.sum(1)
        if not bool((counts == counts[0]).all()):
            raise ConfigError(f"every sample must keep the same number of patches, got {counts.tolist()}")
        num_visible = int(counts[0])
    return torch.argsort(visible.to(torch.int8), dim=1, descending=True, stable=True)[:, :num_visible]
