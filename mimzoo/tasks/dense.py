"""Dense-task pieces: the depth, segmentation and normal losses, the device-side scale-and-crop view and the
segmentation metrics. `mimzoo.methods.DenseFinetune` fine-tunes a backbone with them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..data.dense import IGNORE_INDEX

# task -> (the batch key of its target, output channels; None = the number of classes)
TASKS = {"depth": ("depth", 1), "segmentation": ("mask", None), "normals": ("normal", 3)}


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid pixels, without boolean indexing (which would wait for the device)."""
    return torch.where(valid, x, 0).sum() / valid.sum().clamp(min=1)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, variance_focus: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014 in the form of BTS/AdaBins): 10 * sqrt(mean(g^2) -
    variance_focus * mean(g)^2), g = log(pred) - log(target) over the valid pixels (target > 0) of the batch."""
    valid = target > 0
    g = torch.log(pred.clamp(min=1e-6)) - torch.log(torch.where(valid, target, 1))
    return 10 * (masked_mean(g ** 2, valid) - variance_focus * masked_mean(g, valid) ** 2).clamp(min=1e-12).sqrt()


def berhu_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reverse Huber (Laina et al. 2016), MultiMAE's NYUv2 loss: |e| below c = 0.2 max|e| (over the batch's valid
    pixels), (e^2 + c^2) / 2c above; mean over the valid pixels."""
    valid = target > 0
    e = torch.where(valid, pred - target, 0).abs()
    c = (0.2 * e.max().detach()).clamp(min=1e-5)
    return masked_mean(torch.where(e < c, e, (e ** 2 + c ** 2) / (2 * c)), valid)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Over the valid pixels (target with non-zero norm) of unit-normalised predictions: mean absolute difference of
    the vectors ("l1", MultiMAE's Taskonomy loss) or mean angle in radians ("angular")."""
    valid = target.norm(dim=1) > 0
    pred = F.normalize(pred, dim=1)
    if kind == "l1":
        return masked_mean((pred - target).abs().sum(1), valid) / 3
    cos = (pred * target).sum(1).clamp(-1 + 1e-6, 1 - 1e-6)  # acos has an infinite slope at +-1
    return masked_mean(torch.acos(cos), valid)


def scale_crop(images: torch.Tensor, target: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
               key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, rescale by a factor drawn from `scale` and cut a random `size` window (MultiMAE's RandomCrop
    after SmallestMaxSize for NYUv2; large-scale jitter (0.1, 2.0) + pad + RandomCrop for ADE20K), in one
    `grid_sample` on the device. The image is sampled bilinearly and padded with 0 (the mean colour after
    normalisation), the target by nearest neighbour and padded as invalid (depth / normal 0, label 255)."""
    B, _, H, W = images.shape
    device = images.device
    s = torch.empty(B, 1, 1, device=device).uniform_(*scale)
    # top-left of the window in the rescaled frame; windows larger than the frame keep it at the top left
    # (whole pixels, so that at scale 1 the window is an exact crop)
    oy = (torch.rand(B, 1, 1, device=device) * ((H * s - size[0]).clamp(min=0).floor() + 1)).floor()
    ox = (torch.rand(B, 1, 1, device=device) * ((W * s - size[1]).clamp(min=0).floor() + 1)).floor()
    ys = (torch.arange(size[0], device=device).view(1, -1, 1) + 0.5 + oy) / s  # source pixel coordinates
    xs = (torch.arange(size[1], device=device).view(1, 1, -1) + 0.5 + ox) / s
    grid = torch.stack([(2 * xs / W - 1).expand(B, *size), (2 * ys / H - 1).expand(B, *size)], dim=-1)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if key == "mask":
        inside = ((ys < H) & (xs < W)).expand(B, *size)
        labels = F.grid_sample(target[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
        return images, torch.where(inside, labels, IGNORE_INDEX)
    return images, F.grid_sample(target, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def segmentation_metrics(num_classes: int) -> MetricCollection:
    """mIoU over the classes present in prediction or target (mmseg's convention) and pixel accuracy, accumulated
    over the whole dataset; label 255 is ignored."""
    return MetricCollection({
        "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX),
        "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)})
