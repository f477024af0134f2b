"""Image folders (recursive) as datasets; corrupt files are skipped, counted and reported once, never fatal."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import NotFoundError
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image, is_jpeg


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
    every repeat (methods that tell samples apart by index, such as MIM-Refiner's queue, see one image as one).
    full: the whole image with its aspect, shorter side at most `size` (3, h, w), for crops over the full photo."""

    def __init__(self, files: list[Path], size: int = 256, labels: list[int] | None = None, repeats: int = 1,
                 full: bool = False, device_decode: bool = False):
        self.files, self.size, self.labels, self.repeats, self.full = list(files), size, labels, repeats, full
        self.device_decode = device_decode  # JPEGs go to the device undecoded (`mimzoo.data.device_decode`)

    def __len__(self) -> int:
        return len(self.files) * self.repeats

    def __getitem__(self, index: int) -> dict | None:
        index = index % len(self.files)
        if self.device_decode:
            item = encoded_item(self.files[index], index, self.size, self.full)
            if item is not None:
                return {**item, "label": self.labels[index]} if self.labels is not None else item
        try:
            item = {"image": decode_image(self.files[index], self.size, full=self.full), "index": index}
        except CorruptImageError as e:
            report_corrupt(e)
            return None
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item


def encoded_item(path: Path, index: int, size: int, full: bool) -> dict | None:
    """{"encoded": the file's bytes, ...} for a JPEG (decoded later on the device), None for anything else."""
    try:
        data = path.read_bytes()
    except OSError:
        return None  # the CPU path reports it
    if not is_jpeg(data):
        return None
    return {"encoded": data, "encoded_name": str(path), "index": index, "decode_size": size, "decode_full": full}


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of different sizes as one zero-padded (B, C, H, W) batch (each at the top left) and their (B, 2)
    true (h, w)."""
    sizes = torch.tensor([im.shape[-2:] for im in images], dtype=torch.long)
    H, W = sizes.max(0).values.tolist()
    batch = images[0].new_zeros(len(images), images[0].shape[0], H, W)
    for b, im in enumerate(images):
        batch[b, :, : im.shape[-2], : im.shape[-1]] = im
    return batch, sizes


def collate_images(items: list[dict | None]) -> dict:
    """Stack the good items; `skipped` counts the bad ones (None, or an item whose image is None: a stream
    cannot drop items without losing the count), so a batch may come out smaller, or even empty. Images of
    different sizes (full-image decoding) are padded, with their true sizes under "image_size". Undecoded JPEGs
    (`ImageFolderDataset(device_decode=True)`) travel as lists beside them (`device_decode.decode_batch`)."""
    encoded = [it for it in items if it is not None and "encoded" in it]
    if encoded:
        batch = collate_images([it for it in items if it is None or "encoded" not in it])
        labels = {"encoded_label": torch.tensor([it["label"] for it in encoded])} if "label" in encoded[0] else {}
        return {**batch, "encoded": [it["encoded"] for it in encoded], **labels,
                "encoded_name": [it["encoded_name"] for it in encoded],
                "encoded_index": [it["index"] for it in encoded], "decode_size": encoded[0]["decode_size"],
                "decode_full": encoded[0]["decode_full"]}
    good = [it for it in items if it is not None and it.get("image") is not None]
    if good and len({it["image"].shape for it in good}) > 1:
        image, sizes = pad_images([it["image"] for it in good])
        batch = collate_images([{**it, "image": image[b]} for b, it in enumerate(good)])
        return {**batch, "image_size": sizes, "skipped": torch.tensor(len(items) - len(good))}
    if good:
        batch = {k: torch.stack([it[k] for it in good]) if isinstance(good[0][k], torch.Tensor)
                 else torch.as_tensor([it[k] for it in good])
                 for k in good[0] if not k.startswith("__")}  # webdataset adds __key__ strings
    else:
        batch = {"image": torch.zeros(0, 3, 1, 1, dtype=torch.uint8), "index": torch.zeros(0, dtype=torch.long)}
    batch["skipped"] = torch.tensor(len(items) - len(good))
    return batch
