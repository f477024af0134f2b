"""RandomResizedCrop over each image's own full extent, batched on the device.

torchvision's `RandomResizedCrop` (what MAE, SiameseIM and MIM-Refiner use) samples a box inside the whole photo,
whatever its aspect, and resizes it to a square. Batches of photos of different sizes arrive zero-padded to a common
(H, W) with each image's true (h, w) beside them (`ImageDataModule(crop="full")`), so both steps are done here per
image and in one batched call:

- `rrc_boxes`: torchvision's `get_params` (10 attempts of area ~ U(scale) x h x w and log-ratio ~ U(log ratio),
  the first that fits, else the centre crop with the ratio clamped), vectorised. Its uniform draws come from the CPU
  generator (so `seed_everything` reproduces them on any device) and are moved once per batch; the boxes are then
  computed on the device from the device's sizes: no host sync.
- `crop_resize`: crop + resize + optional mirror as two batched matrix products, out = Ry @ image @ Rx^T, with Ry
  and Rx the interpolation weights of torch's `F.interpolate` (bicubic a = -0.75 or bilinear, half-pixel centres,
  taps clamped to the crop's edge, no antialiasing) restricted to each image's box. Hand-written because no library
  op crops a different box out of each image of a batch with torch's resize semantics: Kornia's `crop_and_resize`
  maps box corners to corners (align-corners sampling) and its slice mode crops image by image; this gives exactly
  `F.interpolate(image[..., y0:y1, x0:x1])` (tests/test_views.py checks it to 1e-3 after normalisation).
"""
from __future__ import annotations

import math

import torch


def rrc_boxes(sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
              attempts: int = 10) -> torch.Tensor:
    """(B, 4) x0, y0, x1, y1 (whole pixels, x1 / y1 exclusive) of torchvision's RandomResizedCrop for images of
    `sizes` (B, 2) (h, w), on `sizes`' device."""
    B, device = sizes.shape[0], sizes.device
    u = torch.rand(B, attempts, 2).to(device, non_blocking=True)  # CPU generator (see the module docstring)
    pos = torch.rand(B, 2).to(device, non_blocking=True)
    h, w = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    target = h * w * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    cw, ch = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.float().argmax(1, keepdim=True)  # the first attempt that fits (0 when none does)
    cw, ch = cw.gather(1, first), ch.gather(1, first)
    # no attempt fits: torchvision's fallback, the whole image cropped to the nearest allowed ratio, centred
    in_ratio = w / h
    fw = torch.where(in_ratio < ratio[0], w, torch.where(in_ratio > ratio[1], torch.round(h * ratio[1]), w))
    fh = torch.where(in_ratio < ratio[0], torch.round(w / ratio[0]), h)
    any_fit = fits.any(1, keepdim=True)
    cw, ch = torch.where(any_fit, cw, fw), torch.where(any_fit, ch, fh)
    # torch.randint(0, h - ch + 1) as a uniform draw; the fallback is centred ((h - ch) // 2)
    y0 = torch.where(any_fit, torch.floor(pos[:, 0:1] * (h - ch + 1)).clamp(max=h - ch), torch.floor((h - ch) / 2))
    x0 = torch.where(any_fit, torch.floor(pos[:, 1:2] * (w - cw + 1)).clamp(max=w - cw), torch.floor((w - cw) / 2))
    return torch.cat([x0, y0, x0 + cw, y0 + ch], dim=1)


def centre_boxes(sizes: torch.Tensor, fraction: float = 1.0) -> torch.Tensor:
    """(B, 4) centred square boxes of side fraction x min(h, w) (MAE's eval transform: resize the shorter side to
    size / 0.875 and centre crop size is the centre square of side 0.875 x min(h, w))."""
    h, w = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    side = torch.round(torch.minimum(h, w) * fraction).clamp(min=1)
    y0, x0 = torch.floor((h - side) / 2), torch.floor((w - side) / 2)
    return torch.cat([x0, y0, x0 + side, y0 + side], dim=1)


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel at distance |t| < 2 (torch's upsample_bicubic2d coefficients)."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, out: int, total: int, mode: str) -> torch.Tensor:
    """(B, out, total) weights that resample the span [start, start + length) of each row (B,) to `out` samples as
    `F.interpolate(..., mode, align_corners=False)` resamples that span cut out on its own."""
    B, device = start.shape[0], start.device
    u = torch.arange(out, device=device, dtype=torch.float32)
    start, length = start.float()[:, None], length.float()[:, None]
    real = (u + 0.5) * (length / out) - 0.5  # source coordinate within the span
    if mode == "bilinear":
        real = real.clamp(min=0)  # torch clamps negative source coordinates for linear modes
        base = torch.floor(real)
        taps = torch.stack([base, base + 1], -1)
        weights = torch.stack([1 - (real - base), real - base], -1)
    elif mode == "bicubic":
        base = torch.floor(real)
        taps = base[..., None] + torch.arange(-1, 3, device=device, dtype=torch.float32)
        weights = _cubic(real[..., None] - taps)
    else:
        raise ValueError(f"interpolation must be bicubic or bilinear, got {mode!r}")
    # taps outside the span read its edge pixel, as the crop on its own would
    index = (taps.clamp(min=0).minimum(length[..., None] - 1) + start[..., None]).long()
    matrix = torch.zeros(B, out, total, device=device, dtype=torch.float32)
    return matrix.scatter_add_(2, index, weights)


def area_weights(length: torch.Tensor, out: torch.Tensor, rows: int, total: int) -> torch.Tensor:
    """(B, rows, total) pixel-area averaging (OpenCV's INTER_AREA when shrinking) of the span [0, length) of each
    row to `out` samples (B,); rows past `out` are zero. Output pixel i averages [i, i + 1) x length / out."""
    device = length.device
    scale = (length.float() / out.float())[:, None, None]
    i = torch.arange(rows, device=device, dtype=torch.float32)[None, :, None]
    j = torch.arange(total, device=device, dtype=torch.float32)[None, None, :]
    overlap = (torch.minimum((i + 1) * scale, j + 1) - torch.maximum(i * scale, j)).clamp(min=0)
    inside = (i < out[:, None, None]) & (j < length[:, None, None])
    return torch.where(inside, overlap / scale, torch.zeros_like(overlap))


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, mode: str = "bicubic",
                flip: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, size, size): each image's box (B, 4) x0, y0, x1, y1 resized (no antialiasing), mirrored where
    `flip` (B,) is set. Float images; a batch of one (H, W) whose boxes lie inside each image's own extent."""
    H, W = images.shape[-2:]
    x0, y0, x1, y1 = boxes.unbind(-1)
    ry = resize_weights(y0, y1 - y0, size, H, mode)
    rx = resize_weights(x0, x1 - x0, size, W, mode)
    if flip is not None:
        rx = torch.where(flip[:, None, None].bool(), rx.flip(1), rx)
    x = images.float()
    return torch.matmul(torch.matmul(ry[:, None], x), rx[:, None].transpose(-1, -2))
