"""The ConvNeXt adapter segmentation head of MultiMAE (Bachmann et al. 2022), used by MIMIC for ADE20K.

Source: ``ConvNeXtAdapter`` in ``multimae/output_adapters.py`` and its ``ConvNeXtBlock`` in
``multimae/output_adapter_utils.py`` of github.com/EPFL-VILAB/MultiMAE, built by ``run_finetuning_semseg.py`` with
the settings of ``cfgs/finetune/semseg/ade/ft_ade_64e_mae-b_rgb.yaml``: ``decoder_dim: 6144``,
``decoder_preds_per_patch: 16``, ``decoder_depth: 4``, ``patch_size: 16``, ``num_classes: 150`` (no void class),
bilinear final interpolation (the script's default), no drop path in the adapter.

Computation, in upstream's order:

1. the last encoder layer's patch tokens (global tokens dropped; MultiViT has no final norm, so upstream sees the
   last block's raw output) go through one linear layer D -> ``hidden_dim`` (6144);
2. each token's 6144 values are read as ``preds_per_patch`` (16 = 4 x 4, row-major) groups of
   ``hidden_dim // preds_per_patch`` (384) channels and laid out as a 4 x 4 block of 384-channel "sub-pixels", so a
   h x w token grid becomes a 384-channel map of 4h x 4w (1/4 of the input for patch size 16);
3. ``depth`` (4) isotropic ConvNeXt blocks at width 384: 7x7 depthwise conv, LayerNorm (eps 1e-6) over channels,
   Linear 384 -> 1536, exact GELU, Linear 1536 -> 384, residual add; no layer scale, no drop path;
4. a 1x1 conv 384 -> ``num_classes``;
5. interpolation (bilinear, ``align_corners=False``) to the image size.

Parameters for D = 768 and 150 classes: 4,724,736 (projection) + 4 x 1,201,536 (blocks) + 57,750 (classifier) =
9,588,630, which with MultiMAE's ViT-B encoder (85,645,824 including its one global token) is the 95,234,454 of
MIMIC's ADE20K fine-tuning log.

Initialisation follows what the fine-tuning run actually starts from: the adapter initialises its Linear layers
with a truncated normal (std 0.02), but MultiMAE's constructor then re-applies its own init to every sub-module,
output adapters included, so the Linear layers end up Xavier-uniform with zero bias; LayerNorms are 1/0 and the
convolutions keep PyTorch's default. Only the encoder is loaded from the pre-trained checkpoint.

The receptive field is not one patch: the four 7x7 depthwise convolutions at 1/4 resolution reach 12 sub-pixels,
i.e. three tokens, to each side, and bilinear upsampling blends neighbouring sub-pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class ConvNeXtBlock(nn.Module):
    """Isotropic ConvNeXt block (no layer scale, no stochastic depth) on an NCHW map."""

    def __init__(self, dim: int, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtAdapterHead(nn.Module):
    """MultiMAE's ConvNeXt output adapter as a head on the token maps of ``forward_intermediates`` (NCHW).

    ``forward(features, size)`` uses ``features[-1]`` (B, ``embed_dim``, h, w) and returns (B, ``num_classes``,
    *size*) logits. ``preds_per_patch`` must be a perfect square dividing ``hidden_dim``; ``patch_size`` is kept
    for reference only (the grid comes from the feature map, the output size from ``size``)."""

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int = 16, preds_per_patch: int = 16,
                 depth: int = 4, hidden_dim: int = 6144, interpolate_mode: str = "bilinear"):
        super().__init__()
        side = math.isqrt(preds_per_patch)
        if side * side != preds_per_patch:
            raise ConfigError(f"preds_per_patch must be a perfect square, got {preds_per_patch}")
        if hidden_dim % preds_per_patch:
            raise ConfigError(f"hidden_dim {hidden_dim} is not divisible by preds_per_patch {preds_per_patch}")
        if interpolate_mode not in ("bilinear", "nearest"):
            raise ConfigError(f"interpolate_mode must be 'bilinear' or 'nearest', got {interpolate_mode!r}")
        self.patch_size = patch_size
        self.preds_per_patch = preds_per_patch
        self.side = side
        self.class_dim = hidden_dim // preds_per_patch
        self.interpolate_mode = interpolate_mode
        self.proj = nn.Linear(embed_dim, hidden_dim)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(self.class_dim) for _ in range(depth)))
        self.classifier = nn.Conv2d(self.class_dim, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        tokens = features[-1]
        b, _, h, w = tokens.shape
        s, c = self.side, self.class_dim
        x = self.proj(tokens.permute(0, 2, 3, 1))  # (B, h, w, hidden)
        # hidden index = (row_in_patch * s + col_in_patch) * class_dim + channel
        x = x.reshape(b, h, w, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * s, w * s)
        x = self.classifier(self.blocks(x))
        return F.interpolate(x, size=tuple(size), mode=self.interpolate_mode)
