"""View makers that run batched on the training device (called from `on_after_batch_transfer`).

Input: uint8 images (B, 3, H, W). Output: normalised float views plus the parameters that relate them to the
source (crop boxes in source pixels as x0, y0, x1, y1; flips). Randomness comes from the global torch RNG, so
`lightning.seed_everything` makes every draw reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn

from .models import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class Views:
    images: torch.Tensor  # (B, 3, size, size) float, normalised
    boxes: torch.Tensor  # (B, 4) x0, y0, x1, y1 of the crop in source pixels (before any flip)
    flipped: torch.Tensor  # (B,) bool


class MAEViews(nn.Module):
    """MAE's training view: RandomResizedCrop(size, scale, ratio, bicubic) + horizontal flip + normalisation,
    one independent draw per sample. In eval mode: resize the shorter side to size / 0.875 and center crop."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.crop = K.RandomResizedCrop((size, size), scale=scale, ratio=ratio, resample="bicubic")
        self.flip = K.RandomHorizontalFlip(p=hflip)
        self.resize = K.Resize(int(size / 0.875), side="short", resample="bicubic", antialias=True)
        self.center = K.CenterCrop(size)
        self.normalize = K.Normalize(torch.tensor(self.mean), torch.tensor(self.std))

    def forward(self, images: torch.Tensor) -> Views:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        B = x.shape[0]
        if not self.training:
            x = self.center(self.resize(x))
            return Views(self.normalize(x), self._center_boxes(images.shape[-2:], B, x.device),
                         torch.zeros(B, dtype=torch.bool, device=x.device))
        x = self.crop(x).clamp_(0, 1)  # bicubic overshoots
        corners = self.crop._params["src"].to(x.device)  # (B, 4, 2) corners of each crop, (x, y) pixels
        boxes = torch.cat([corners[:, 0], corners[:, 2] + 1], dim=1)
        x = self.flip(x)
        flipped = self.flip._params["batch_prob"].to(device=x.device, dtype=torch.bool)
        return Views(self.normalize(x), boxes, flipped)

    def _center_boxes(self, hw, batch: int, device) -> torch.Tensor:
        h, w = hw
        s = self.size / 0.875 / min(h, w)  # source pixels per resized pixel: 1 / s
        side = self.size / s
        x0, y0 = (w - side) / 2, (h - side) / 2
        return torch.tensor([x0, y0, x0 + side, y0 + side], device=device).expand(batch, 4)
