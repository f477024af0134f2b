"""Decoding: any image file -> a fixed-size uint8 tensor, or a clear error naming the file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import Error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


class CorruptImageError(Error, ValueError):
    """A file that cannot be decoded as an image; datasets skip and count it."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode image {source}: {reason}")
        self.source, self.reason = source, reason


def square_uint8(image: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """RGB, shorter side resized to `size` (bicubic, antialiased), center-cropped: (3, size, size) uint8."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def open_image(source: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Decode fully (so truncation is caught here, not later), keeping the native size and mode (16-bit depth,
    palette labels); any decoding failure becomes a CorruptImageError naming the file."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not data:
            raise CorruptImageError(label, "the file is empty (0 bytes)")
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except CorruptImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(label, f"{type(e).__name__}: {e}") from e


def decode_image(source: bytes | str | Path, size: int, name: str | None = None) -> torch.Tensor:
    """Decode fully and make it (3, size, size) uint8."""
    return square_uint8(open_image(source, name), size)
