"""The built-in sample set: the photographs that ship with scikit-image, so the quick start needs no download."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# real photographs only (no synthetic test patterns); grayscale ones become 3-channel
PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
          "camera", "clock", "coins", "moon", "brick", "grass", "gravel")


def sample_images() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    out = [(name, getattr(data, name)()) for name in PHOTOS]
    left, right, _ = data.stereo_motorcycle()
    out += [("motorcycle_left", left), ("motorcycle_right", right)]
    return [(n, np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]) for n, a in out]


def sample_folder(root: str | os.PathLike | None = None, max_side: int = 320) -> Path:
    """Write the sample photos as PNG files once (each atomically, shorter side at most `max_side` so that
    decoding them every epoch stays cheap) and return the folder."""
    from ..download import cache_dir

    folder = Path(root) if root else cache_dir() / f"mimzoo-sample-images-{max_side}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in sample_images():
        path = folder / f"{name}.png"
        if not path.exists():
            tmp = folder / f".{name}.png.tmp"
            image = Image.fromarray(array)
            image.thumbnail((max_side * max(image.size) // min(image.size),) * 2, Image.Resampling.LANCZOS)
            image.save(tmp, format="png")
            os.replace(tmp, path)
    return folder
