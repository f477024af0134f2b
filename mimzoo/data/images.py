"""Decoding: any image file -> a fixed-size uint8 tensor, or a clear error naming the file."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import Error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # PIL's 16- and 32-bit integer single-channel modes
EXIF_ORIENTATION = 0x0112


class CorruptImageError(Error, ValueError):
    """A file that cannot be decoded as an image; datasets skip and count it."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode image {source}: {reason}")
        self.source, self.reason = source, reason


def square_uint8(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """RGB, shorter side resized to `size` (bicubic, antialiased), center-cropped: (3, size, size) uint8."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = to_rgb(image)
    nw, nh = target_size(*image.size, size, full=False)
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def full_uint8(image: Image.Image | np.ndarray, size: int, max_aspect: float = 3.0) -> torch.Tensor:
    """RGB, the whole image with its aspect, shrunk (bicubic, antialiased) so that the shorter side is at most
    `size` and the longer at most `max_aspect` x `size` (panoramas would pad a batch to mostly zeros); never
    enlarged: (3, h, w) uint8. What `crop="full"` training decodes to: the views crop from the full extent."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = to_rgb(image)
    target = target_size(*image.size, size, full=True, max_aspect=max_aspect)
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=None)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any mode. 16-bit (and 32-bit integer) grayscale is scaled to 8 bits, where PIL's convert would
    clip every value above 255 to white; float images in [0, 1] are scaled, others clipped."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image).astype(np.float64)
        full = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(values * (255.0 / full)), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
        image = Image.fromarray(np.clip(np.round(np.nan_to_num(values)), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def open_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Decode fully (so truncation is caught here, not later), keeping the native mode (16-bit depth, palette
    labels), upright as viewers show it (the EXIF orientation of phone photos applied); any decoding failure
    becomes a CorruptImageError naming the file."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not data:
            raise CorruptImageError(label, "the file is empty (0 bytes)")
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return image
    except CorruptImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(label, f"{type(e).__name__}: {e}") from e


def decode_image(source: bytes | str | Path, size: int, name: str | None = None, full: bool = False) -> torch.Tensor:
    """Decode fully and make it (3, size, size) uint8 (the centre square), or with `full` the whole image with
    its aspect (`full_uint8`). Complete 8-bit RGB / grayscale JPEGs take OpenCV's faster path (`fast_jpeg`);
    everything else, and anything OpenCV cannot decode, goes through PIL (`open_image`)."""
    if not isinstance(source, bytes):
        name = name or str(source)
        try:
            source = Path(source).read_bytes()
        except OSError as e:
            raise CorruptImageError(name, f"{type(e).__name__}: {e}") from e
    fast = fast_jpeg(source, size, full)
    if fast is not None:
        return fast
    image = open_image(source, name)
    return full_uint8(image, size) if full else square_uint8(image, size)


def is_jpeg(data: bytes) -> bool:
    """Starts with the JPEG start-of-image marker (what nvjpeg and the OpenCV path take)."""
    return data[:2] == b"\xff\xd8"


def target_size(w: int, h: int, size: int, full: bool, max_aspect: float = 3.0) -> tuple[int, int]:
    """(width, height) that square_uint8 (before its centre crop) or full_uint8 resizes a w x h image to."""
    if full:
        scale = min(1.0, size / min(w, h), max_aspect * size / max(w, h))
        return (w, h) if scale == 1 else (max(1, round(w * scale)), max(1, round(h * scale)))
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def fast_jpeg(data: bytes, size: int, full: bool) -> torch.Tensor | None:
    """The worker's JPEG path, about 1.4-1.6x PIL's for a 500 x 375 photo and 6x for a 1600 x 1200 one (docs/
    benchmarks.md): OpenCV decodes at the smallest DCT scale (1/2, 1/4, 1/8) that stays at least the target size
    and shrinks with pixel-area averaging (`INTER_AREA`; PIL's path uses antialiased bicubic: a mean difference
    of about 1 of 255). The EXIF orientation is applied as on the PIL path. None (use PIL) unless the file is a
    complete 8-bit RGB or grayscale JPEG: a truncated file (no end marker) must fail loudly in PIL rather than
    decode grey in OpenCV, and PIL handles CMYK and other modes."""
    if not is_jpeg(data) or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None
    try:
        header = Image.open(io.BytesIO(data))  # reads the header only
        if header.mode not in ("RGB", "L"):
            return None
        w, h = header.size
        if header.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # transposed: OpenCV turns it upright
            w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    tw, th = target_size(w, h, size, full)
    flag = next((f for k, f in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)) if w // k >= tw and h // k >= th), cv2.IMREAD_COLOR)
    x = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if x is None:
        return None
    if (x.shape[1], x.shape[0]) != (tw, th):
        shrink = x.shape[1] >= tw and x.shape[0] >= th
        x = cv2.resize(x, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
    if not full:
        top, left = (th - size) // 2, (tw - size) // 2
        x = x[top:top + size, left:left + size]
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
