"""Positional encodings: MAE's fixed 2-D sin-cos table and CroCo v2's 2-D RoPE."""
from __future__ import annotations

import torch
from timm.layers import build_rotary_pos_embed

from ..errors import ConfigError


def sincos_2d(dim: int, grid: tuple[int, int], cls_rows: int = 0) -> torch.Tensor:
    """MAE's `get_2d_sincos_pos_embed` as a (1, cls_rows + H*W, dim) float32 tensor.

    Layout matters for loading: the first dim/2 channels encode the column, the last dim/2 the row, each as
    [sin | cos] with omega_i = 10000^(-i / (dim/4)); computed in float64 like upstream, prefix rows are zero.
    """
    if dim % 4:
        raise ConfigError(f"sin-cos position embedding needs an embed dim divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angle = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)
    table = torch.cat([torch.zeros(cls_rows, dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)


def rope_2d(head_dim: int, grid: tuple[int, int], base: float = 100.0) -> torch.Tensor:
    """(H*W, 2*head_dim) cat(sin, cos) table for timm's `apply_rot_embed_cat(..., half=True)`.

    Integer patch coordinates and inv_freq = 1/base^(2i/(head_dim/2)) as in CroCo v2. timm pairs channel j with
    j + head_dim/2 and interleaves the row and column bands by quarter, whereas CroCo rotates each half on its own
    (rows in the first half, columns in the second). The two agree once the 2nd and 3rd quarters of every q/k head
    are swapped, which the CroCo converter does on the weights (see `mimzoo.convert.croco.rope_quarter_swap`).
    """
    if head_dim % 8:
        raise ConfigError(f"2-D RoPE needs a head dim divisible by 8, got {head_dim}")
    sin, cos = build_rotary_pos_embed(list(grid), dim=head_dim, temperature=base, in_pixels=False,
                                      rotate_half=True)
    return torch.cat([sin, cos], dim=-1)
