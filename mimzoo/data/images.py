"""Decoding: any image file -> a fixed-size uint8 tensor, or a clear error naming the file."""
from __future__ import annotations

import io
from pathlib import Path

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
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
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


def decode_image(source: bytes | str | Path, size: int, name: str | None = None) -> torch.Tensor:
    """Decode fully and make it (3, size, size) uint8."""
    return square_uint8(open_image(source, name), size)
