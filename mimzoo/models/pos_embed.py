"""Positional encodings: MAE's fixed 2-D sin-cos table (and SiameseIM's row-first one), SiameseIM's relative
embedding of one view's patches in another's, and CroCo v2's 2-D RoPE."""
from __future__ import annotations

import torch
from timm.layers import build_rotary_pos_embed

from ..errors import ConfigError


def sincos_2d(dim: int, grid: tuple[int, int], cls_rows: int = 0, rows_first: bool = False) -> torch.Tensor:
    """MAE's `get_2d_sincos_pos_embed` as a (1, cls_rows + H*W, dim) float32 tensor.

    Layout matters for loading: the first dim/2 channels encode the column, the last dim/2 the row, each as
    [sin | cos] with omega_i = 10000^(-i / (dim/4)); computed in float64 like upstream, prefix rows are zero.
    `rows_first`: SiameseIM's version, whose halves are swapped (row first, then column).
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

    table = torch.cat([encode(rows), encode(cols)] if rows_first else [encode(cols), encode(rows)], dim=1)
    table = torch.cat([torch.zeros(cls_rows, dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)


def view2_centres_in_view1(rel, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the centre of every patch (r, c) of view 2 lies in view 1, in view-1 patch-index units (patch k is
    centred at k): SiameseIM's geometry, (B, g*g) rows and columns in row-major patch order, mirrored where exactly
    one view is flipped. rel: a `mimzoo.views.RelativeBoxes` of (B,) tensors."""
    delta_i, delta_j, delta_h, delta_w, relative_flip, flip_delta_j = (t.float() for t in rel)
    centre = torch.arange(grid, dtype=torch.float32, device=delta_h.device) + 0.5
    rows, cols = (c.flatten() for c in torch.meshgrid(centre, centre, indexing="ij"))
    y = delta_h[:, None] * rows + delta_i[:, None] * grid
    x = delta_w[:, None] * cols + delta_j[:, None] * grid
    x_mirrored = -delta_w[:, None] * cols + flip_delta_j[:, None] * grid
    flip = relative_flip[:, None]
    x = flip * x_mirrored + (1 - flip) * x  # upstream's blend, bit for bit
    return y - 0.5, x - 0.5


def relative_sincos(rel, dim: int, grid: int) -> torch.Tensor:
    """SiameseIM's `get_2d_sincos_pos_embed_relative`: (B, g*g, 2*dim) float32, detached. For every patch of
    view 2, its centre in view 1 (`view2_centres_in_view1`: row, then column) and the log scale of view 2
    relative to view 1, each channel group [sin | cos] with omega_i = 10000^(-i / (dim/4))."""
    y, x = view2_centres_in_view1(rel, grid)
    delta_h, delta_w = rel[2].float(), rel[3].float()
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=y.device) / (dim / 4))
    scale_h = (10 * torch.log(delta_h))[:, None, None] * omega
    scale_w = (10 * torch.log(delta_w))[:, None, None] * omega
    angles = [y[..., None] * omega, x[..., None] * omega, scale_h.expand(-1, y.shape[1], -1),
              scale_w.expand(-1, y.shape[1], -1)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=-1).detach()


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
