"""Random masking rules of the upstream codes, as pure functions of an explicit `noise` draw.

mask convention everywhere: 1 / True = removed (hidden from the encoder, predicted).
"""
from __future__ import annotations

import math

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


def block_mask(batch_size: int, grid: tuple[int, int], num_masked: int, min_patches: int = 16,
               max_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None,
               max_attempts: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """BEiT's block-wise mask with a fixed count (`MaskingGenerator(..., fixed_num_masking_patches=True)`, as
    SiameseIM draws it): (B, H*W) bool, True = removed, exactly `num_masked` per sample.

    Rectangles of area U(min_patches, remaining) and log-uniform aspect in [min_aspect, max_aspect] are added
    while they mask at least one new patch and no more than remain; after `max_attempts` rectangles in a row
    that add nothing, the rest is filled with random single patches. Drawn for the whole batch at once (one
    rectangle per sample per round), on the CPU from `generator`: the same distribution as BEiT's per-sample
    Python loop, not the same random sequence."""
    H, W = grid
    if not 0 <= num_masked <= H * W:
        raise ConfigError(f"num_masked must be in [0, {H * W}] for a {H}x{W} grid, got {num_masked}")
    max_patches = num_masked if max_patches is None else max_patches
    log_aspect = torch.tensor([math.log(min_aspect), math.log(max_aspect or 1 / min_aspect)])
    rows = torch.arange(H).view(1, H, 1)
    cols = torch.arange(W).view(1, 1, W)
    mask = torch.zeros(batch_size, H, W, dtype=torch.bool)
    count = torch.zeros(batch_size, dtype=torch.long)
    failures = torch.zeros(batch_size, dtype=torch.long)
    active = count < num_masked
    for _ in range(64 * max_attempts):  # a generous cap; every sample stops long before it
        if not bool(active.any()):
            break
        u = torch.rand(batch_size, 4, generator=generator)
        remaining = (num_masked - count).clamp(max=max_patches).float()
        area = min_patches + (remaining - min_patches) * u[:, 0]
        aspect = torch.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[:, 1])
        h = torch.round(torch.sqrt(area * aspect)).long()
        w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (h < H) & (w < W)
        top = (u[:, 2] * (H - h + 1).clamp(min=1)).long()
        left = (u[:, 3] * (W - w + 1).clamp(min=1)).long()
        rect = ((rows >= top.view(-1, 1, 1)) & (rows < (top + h).view(-1, 1, 1))
                & (cols >= left.view(-1, 1, 1)) & (cols < (left + w).view(-1, 1, 1)))
        new = (rect & ~mask).flatten(1).sum(1)
        accept = active & fits & (new > 0) & (new <= remaining.long())
        mask |= rect & accept.view(-1, 1, 1)
        count += torch.where(accept, new, 0)
        failures = torch.where(accept, 0, failures + active.long())
        active &= (count < num_masked) & (failures < max_attempts)
    # the fallback: random single patches up to the exact count (masked patches always rank first)
    score = mask.flatten(1).float() * 2 + torch.rand(batch_size, H * W, generator=generator)
    chosen = score.topk(num_masked, dim=1).indices
    return torch.zeros(batch_size, H * W, dtype=torch.bool).scatter_(1, chosen, True)
