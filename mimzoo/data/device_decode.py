"""JPEG decoding on the training device (`ImageDataModule(decode="device")`): loader workers only read the files'
bytes, and the batch is decoded where it trains, in one call of torchvision's `decode_jpeg` (nvjpeg on a GPU, so
the CPU cores that would each decode about 200-300 photos/s stop being the limit; see docs/benchmarks.md).

Workers hand over {"encoded": bytes} for files that start like a JPEG (FF D8) and decode everything else (PNG,
WebP, CMYK JPEGs nvjpeg refuses are retried on the CPU below) as before. The encoded bytes travel as Python
`bytes`, which Lightning leaves on the host: `decode_jpeg` reads its input from host memory whatever the device.
A batch that fails as a whole is decoded image by image; an image that fails on the device is retried with the
CPU decoder (mimzoo's own, `decode_image`), and one that fails there too is skipped and counted like any corrupt
file. Resizing follows the worker path: the shorter side to `size` by pixel-area averaging (OpenCV's INTER_AREA,
as batched matrix products), then the centre square or, for crop="full", the whole image (never enlarged).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from ..resized_crops import area_weights
from .folder import pad_images, report_corrupt
from .images import CorruptImageError, decode_image, target_size


def resize_like_worker(images: list[torch.Tensor], size: int, full: bool) -> list[torch.Tensor]:
    """Decoded (3, h, w) uint8 images on one device -> what the worker path (`decode_image(..., size, full)`,
    OpenCV's INTER_AREA when shrinking) makes of them, all shrinking images in one batched pair of matrix products
    (`resized_crops.area_weights`); the rare image to enlarge (square mode, shorter side under `size`) is resized
    alone, bicubic as OpenCV's INTER_CUBIC."""
    targets = [target_size(im.shape[2], im.shape[1], size, full) for im in images]
    out: list[torch.Tensor | None] = [None] * len(images)
    shrink = [i for i, (im, (tw, th)) in enumerate(zip(images, targets)) if tw <= im.shape[2] and th <= im.shape[1]]
    for i in sorted(set(range(len(images))) - set(shrink)):
        tw, th = targets[i]
        x = F.interpolate(images[i][None].float(), size=(th, tw), mode="bicubic", align_corners=False)[0]
        out[i] = _crop(x.round().clamp(0, 255).to(torch.uint8), size, full)
    if shrink:
        batch, sizes = pad_images([images[i] for i in shrink])
        device = batch.device
        sizes = sizes.to(device)
        tw = torch.tensor([targets[i][0] for i in shrink], device=device)
        th = torch.tensor([targets[i][1] for i in shrink], device=device)
        rows, cols = int(max(targets[i][1] for i in shrink)), int(max(targets[i][0] for i in shrink))
        ry = area_weights(sizes[:, 0], th, rows, batch.shape[-2])
        rx = area_weights(sizes[:, 1], tw, cols, batch.shape[-1])
        x = torch.matmul(torch.matmul(ry[:, None], batch.float()), rx[:, None].transpose(-1, -2))
        x = x.round().clamp(0, 255).to(torch.uint8)
        for k, i in enumerate(shrink):
            out[i] = _crop(x[k, :, :targets[i][1], :targets[i][0]], size, full)
    return out


def _crop(x: torch.Tensor, size: int, full: bool) -> torch.Tensor:
    if full:
        return x
    top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
    return x[:, top:top + size, left:left + size]


def decode_on(encoded: list[bytes], names: list[str], device: torch.device, size: int,
              full: bool) -> list[torch.Tensor | None]:
    """Each JPEG decoded on `device` and resized as the worker path does; None where it cannot be decoded at all
    (reported once, as the worker path reports)."""
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    try:
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the whole batched call: find it
        decoded = []
        for d in data:
            try:
                decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    good = [i for i, im in enumerate(decoded) if im is not None]
    resized = resize_like_worker([decoded[i] for i in good], size, full) if good else []
    out: list[torch.Tensor | None] = [None] * len(decoded)
    for i, im in zip(good, resized):
        out[i] = im
    for i in set(range(len(decoded))) - set(good):
        # nvjpeg refuses some valid files (CMYK, arithmetic coding): the CPU decoder may not
        try:
            out[i] = decode_image(encoded[i], size, name=names[i], full=full).to(device, non_blocking=True)
        except CorruptImageError as e:
            report_corrupt(e)
    return out


def decode_batch(batch: dict, device: torch.device) -> dict:
    """A collated batch with "encoded" JPEGs -> the usual {"image", "index", ("image_size"), "skipped"}, with the
    images on `device`: the device-decoded ones join those the workers decoded (padded when sizes differ). Runs
    before the batch transfer (`BaseDataModule.on_before_batch_transfer`): indices and sizes are still host
    tensors, so nothing here waits for the device."""
    encoded, names, indices = batch.pop("encoded"), batch.pop("encoded_name"), batch.pop("encoded_index")
    labels = batch.pop("encoded_label", None)
    size, full = batch.pop("decode_size"), batch.pop("decode_full")
    decoded = decode_on(encoded, names, device, size, full)
    images = [im for im in decoded if im is not None]
    index = [i for im, i in zip(decoded, indices) if im is not None]
    if labels is not None:
        kept = torch.tensor([im is not None for im in decoded])
        batch["label"] = torch.cat([labels[kept], batch["label"]]) if "label" in batch else labels[kept]
    sizes = batch.pop("image_size", None)
    for b in range(batch["image"].shape[0]):  # what the workers decoded (PNG, WebP, ...)
        h, w = sizes[b].tolist() if sizes is not None else batch["image"].shape[-2:]
        images.append(batch["image"][b, :, :h, :w].to(device, non_blocking=True))
    index += batch["index"].tolist()
    skipped = batch["skipped"] + (len(decoded) - len(images) + batch["image"].shape[0])
    if not images:
        return {**batch, "image": torch.zeros(0, 3, 1, 1, dtype=torch.uint8), "index": torch.zeros(0, dtype=torch.long),
                "skipped": skipped}
    if len({im.shape for im in images}) > 1:
        image, batch["image_size"] = pad_images(images)
    else:
        image = torch.stack(images)
    return {**batch, "image": image, "index": torch.tensor(index), "skipped": skipped}
