"""Dense prediction heads on ViT tokens: a linear per-patch head and DPT (Ranftl et al. 2021) in the form MultiMAE,
CroCo and MIMIC use for depth, segmentation and surface normals.

Both take the list of token maps (B, D, h, w) that `ViT.forward_intermediates(..., output_fmt="NCHW")` returns
and give a full-resolution map (B, C, H, W)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def default_hooks(depth: int) -> list[int]:
    """Four equally spaced blocks ending at the last one: [2, 5, 8, 11] for 12 blocks, [5, 11, 17, 23] for 24
    (MultiMAE / CroCo encoder-only / MIMIC); shallow test models repeat blocks."""
    return [max(0, (i + 1) * depth // 4 - 1) for i in range(4)]


class LinearHead(nn.Module):
    """A 1x1 convolution on the last layer's (normed) patch tokens, bilinearly upsampled to the input size: the
    frozen-feature "linear" protocol for dense tasks."""

    def __init__(self, embed_dim: int, out_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(embed_dim, out_channels, 1)

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.proj(features[-1]), size=size, mode="bilinear", align_corners=False)


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Refines the coarser path, adds the (refined) skip, refines again and upsamples to `size`."""

    def __init__(self, dim: int):
        super().__init__()
        self.skip_unit = ResidualConvUnit(dim)
        self.unit = ResidualConvUnit(dim)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            x = x + self.skip_unit(skip)
        # upsampling to the next skip's exact size (not a plain x2) keeps grids that are not multiples of 32 aligned
        x = F.interpolate(self.unit(x), size=size, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """Reassemble four token maps at 1/4, 1/8, 1/16 and 1/32 of the input (layer_dims 96/192/384/768), project to
    `feature_dim`, fuse coarse to fine, and finish with the regression head (conv 3x3, x2, conv 3x3, ReLU, 1x1 ->
    `out_channels`) or the segmentation head (conv 3x3 + BN + ReLU + dropout 0.1, 1x1, x2)."""

    def __init__(self, embed_dim: int | Sequence[int], out_channels: int, kind: str = "regression",
                 layer_dims: Sequence[int] = (96, 192, 384, 768), feature_dim: int = 256, last_dim: int = 32):
        super().__init__()
        if kind not in ("regression", "segmentation"):
            raise ConfigError(f"DPT head kind must be 'regression' or 'segmentation', got {kind!r}")
        dims = [embed_dim] * 4 if isinstance(embed_dim, int) else list(embed_dim)
        resample = [nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4),
                    nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2),
                    nn.Identity(),
                    nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1)]
        self.reassemble = nn.ModuleList(nn.Sequential(nn.Conv2d(d, c, 1), r)
                                        for d, c, r in zip(dims, layer_dims, resample))
        self.project = nn.ModuleList(nn.Conv2d(c, feature_dim, 3, padding=1, bias=False) for c in layer_dims)
        self.fusion = nn.ModuleList(FusionBlock(feature_dim) for _ in layer_dims)
        # the coarsest block has no skip input; DPT (and MultiMAE's count) still has its unit: kept, never trained,
        # so that DDP needs no find_unused_parameters
        self.fusion[-1].skip_unit.requires_grad_(False)
        if kind == "regression":
            self.head = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1), nn.ReLU(True),
                nn.Conv2d(last_dim, out_channels, 1))
        else:
            self.head = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim, 3, padding=1, bias=False), nn.BatchNorm2d(feature_dim),
                nn.ReLU(True), nn.Dropout(0.1), nn.Conv2d(feature_dim, out_channels, 1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))

    def forward(self, features: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if len(features) != 4:
            raise ConfigError(f"DPT needs 4 token maps (hooks), got {len(features)}")
        layers = [p(r(f)) for f, r, p in zip(features, self.reassemble, self.project)]
        x = self.fusion[3](layers[3], None, layers[2].shape[-2:])
        for i in (2, 1, 0):
            out_size = layers[i - 1].shape[-2:] if i else tuple(2 * s for s in layers[0].shape[-2:])
            x = self.fusion[i](x, layers[i], out_size)
        out = self.head(x)
        return out if out.shape[-2:] == tuple(size) else F.interpolate(out, size=size, mode="bilinear",
                                                                         align_corners=False)
