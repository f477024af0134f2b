"""Image folders (recursive) as datasets; corrupt files are skipped, counted and reported once, never fatal."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import NotFoundError
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image


class CorruptImageWarning(UserWarning):
    pass


_reported: set[str] = set()  # per process: one warning per bad file, not one per epoch


def report_corrupt(error: CorruptImageError) -> None:
    if error.source not in _reported:
        _reported.add(error.source)
        warnings.warn(f"skipping {error}", CorruptImageWarning, stacklevel=2)


def list_images(root: str | os.PathLike, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not files:
        raise NotFoundError(f"no images in {root} (searched recursively for {', '.join(extensions)})")
    return files


class ImageFolderDataset(Dataset):
    """Items are {"image": uint8 (3, size, size), "index": int[, "label": int]}, or None for a file that cannot
    be decoded. `repeats`: the files this many times over; "index" is the file's position in `files`, the same in
    every repeat (methods that tell samples apart by index, such as MIM-Refiner's queue, see one image as one)."""

    def __init__(self, files: list[Path], size: int = 256, labels: list[int] | None = None, repeats: int = 1):
        self.files, self.size, self.labels, self.repeats = list(files), size, labels, repeats

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, index: int) -> dict | None:
        index = index % len(self.files)
        try:
            item = {"image": decode_image(self.files[index], self.size), "index": index}
        except CorruptImageError as e:
            report_corrupt(e)
            return None
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


def collate_images(items: list[dict | None]) -> dict:
    """Stack the good items; `skipped` counts the bad ones (None, or an item whose image is None: a stream
    cannot drop items without losing the count), so a batch may come out smaller, or even empty."""
    good = [it for it in items if it is not None and it.get("image") is not None]
    if good:
        batch = {k: torch.stack([it[k] for it in good]) if isinstance(good[0][k], torch.Tensor)
                 else torch.as_tensor([it[k] for it in good])
                 for k in good[0] if not k.startswith("__")}  # webdataset adds __key__ strings
    else:
        batch = {"image": torch.zeros(0, 3, 1, 1, dtype=torch.uint8), "index": torch.zeros(0, dtype=torch.long)}
    batch["skipped"] = torch.tensor(len(items) - len(good))
    return batch
