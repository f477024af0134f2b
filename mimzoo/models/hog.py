"""HOG targets of MaskFeat: per patch, the 9-bin gradient-orientation histograms of its 2x2 cells, per RGB channel.

`HOG` reproduces MaskFeat's generator (mmpretrain's `HOGGenerator(nbins=9, pool=8, gaussian_window=16)`) bit for
bit in float32. Upstream only supports 224x224 inputs (it hard-codes a 14x14 patch grid); this one takes any
height and width divisible by the patch size, and returns the patches in raster order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class HOG(nn.Module):
    """(B, 3, H, W) normalised images -> (B, N, 3 * nbins * (patch_size // pool) ** 2) targets, no gradients.

    The last axis is laid out as (channel, bin, cell row, cell column), as upstream flattens it.
    """

    def __init__(self, nbins: int = 9, pool: int = 8, gaussian_window: int = 16, patch_size: int = 16):
        super().__init__()
        if patch_size % pool or (gaussian_window and patch_size % gaussian_window):
            raise ConfigError(f"HOG patch_size {patch_size} must be a multiple of pool {pool} and of "
                              f"gaussian_window {gaussian_window}: change one of them")
        self.nbins, self.pool, self.gaussian_window, self.patch_size = nbins, pool, gaussian_window, patch_size
        wx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]).expand(3, 1, 3, 3)
        # constants rebuilt by __init__: keeping them out of the state dict keeps checkpoints free of them
        self.register_buffer("weight_x", wx.contiguous(), persistent=False)
        self.register_buffer("weight_y", wx.transpose(2, 3).contiguous(), persistent=False)
        if gaussian_window:
            # upstream's op order (centre, divide by sigma, exp(-n^2/2)), so that every window size rounds as upstream's
            n = torch.arange(gaussian_window, dtype=torch.float32)
            w = torch.exp(-0.5 * ((n - n.mean()) / (gaussian_window // 2)) ** 2)
            kernel = w[:, None] * w[None, :]
            self.register_buffer("gaussian_kernel", kernel / kernel.sum(), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        p, pool, nbins = self.patch_size, self.pool, self.nbins
        if C != 3 or H % p or W % p:
            raise ConfigError(f"HOG needs (B, 3, H, W) images with H and W divisible by {p}, got {C}x{H}x{W}: "
                              f"resize or crop the images to a multiple of {p}")
        # the targets are regression labels: a bf16 histogram would be too coarse, so autocast stays off here
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = F.pad(images.float(), (1, 1, 1, 1), mode="reflect")
            gx = F.conv2d(x, self.weight_x.float(), groups=3)
            gy = F.conv2d(x, self.weight_y.float(), groups=3)
            # stack + norm, not sqrt(gx^2 + gy^2): upstream's op, so the magnitudes match to the last bit
            magnitude = torch.stack([gx, gy], dim=-1).norm(dim=-1)
            bins = torch.floor(torch.atan2(gx, gy) / math.pi * nbins).long() % nbins
            if self.gaussian_window:
                g = self.gaussian_window
                magnitude = magnitude * self.gaussian_kernel.float().repeat(H // g, W // g)
            hist = magnitude.new_zeros(B, 3, nbins, H, W)
            hist.scatter_add_(2, bins.unsqueeze(2), magnitude.unsqueeze(2))
            hist = hist.unfold(3, pool, pool).unfold(4, pool, pool).sum(dim=[-1, -2])
            hist = F.normalize(hist, p=2, dim=2)
            k = p // pool
            hist = hist.reshape(B, 3 * nbins, H // p, k, W // p, k).permute(0, 2, 4, 1, 3, 5)
            return hist.reshape(B, (H // p) * (W // p), 3 * nbins * k * k)
