"""Dense maps as pictures (image | target | prediction rows), written each validation epoch."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.utils import make_grid


def colorize_depth(depth: torch.Tensor, valid: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(B, 1, H, W) metres -> (B, 3, H, W) in [0, 1], inverse depth through OpenCV's magma (near = bright),
    invalid pixels black; one range for target and prediction so they compare."""
    inv = (1 / depth.clamp(min=lo) - 1 / hi) / (1 / lo - 1 / hi)
    u8 = (inv.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    rgb = np.stack([cv2.applyColorMap(m[0], cv2.COLORMAP_MAGMA)[..., ::-1] for m in u8])
    return torch.from_numpy(rgb.copy()).permute(0, 3, 1, 2).float() / 255 * valid.cpu()


def colorize_labels(labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """(B, H, W) class ids -> (B, 3, H, W) with a fixed palette; ignored pixels black."""
    palette = torch.rand(256, 3, generator=torch.Generator().manual_seed(0))
    palette[ignore_index] = 0
    return palette[labels.long().clamp(0, 255).cpu()].permute(0, 3, 1, 2)


def colorize_normals(normals: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) unit vectors -> RGB = (n + 1) / 2, the usual rendering; zero vectors stay black."""
    valid = normals.norm(dim=1, keepdim=True) > 0
    return ((normals + 1) / 2 * valid).clamp(0, 1).cpu().float()


def dense_grid(images: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, task: str, max_rows: int = 6,
               max_depth: float = 10.0) -> torch.Tensor:
    """One row per sample: image (in [0, 1]) | target | prediction (depth, class ids or normals)."""
    n = min(max_rows, images.shape[0])
    images, target, pred = images[:n].float().cpu(), target[:n].float(), pred[:n].float()
    if task == "depth":
        valid = target > 0
        lo = max(1e-3, float(target[valid].min()) if valid.any() else 1e-3)
        hi = float(target[valid].max()) if valid.any() else max_depth
        columns = [colorize_depth(target, valid, lo, hi), colorize_depth(pred, torch.ones_like(valid), lo, hi)]
    elif task == "segmentation":
        columns = [colorize_labels(target), colorize_labels(pred)]
    else:
        columns = [colorize_normals(target), colorize_normals(pred)]
    tiles = torch.stack([images.clamp(0, 1), *columns], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=3, padding=2, pad_value=1.0)
