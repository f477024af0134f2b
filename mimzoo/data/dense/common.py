"""What the dense datasets share: the item format, aspect-keeping resizing, target decoding, the dataset class and
the collate function. One module per dataset (nyuv2, ade20k, taskonomy, stereo_sample) lists its files; the
datamodule reads the table `DATASETS`.

Items are dicts; one target key per task, all resized to the same fixed `size`:
  depth         {"image": uint8 (3, H, W), "depth": float32 (1, H, W) metres, 0 = invalid, "index": int}
  segmentation  {"image": uint8 (3, H, W), "mask": int64 (H, W), 255 = ignore, "index": int}
  normals       {"image": uint8 (3, H, W), "normal": float32 (3, H, W) unit vectors, all-zero = invalid, "index": int}

Resizing keeps the aspect ratio: the largest centred box with the aspect of `size` is cut from the frame (the
cover-resize + centre-crop of MultiMAE's NYU evaluation) and resized, the image bilinearly with antialiasing, the
targets by nearest neighbour: labels, depths and normals are never blended across object edges. A file that cannot
be decoded gives a None item, warned once and dropped (and counted) by `collate_images`, as in ImageFolderDataset.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ...errors import ConfigError, NotFoundError
from ..folder import collate_images, report_corrupt
from ..images import CorruptImageError, open_image, to_rgb

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels

IGNORE_INDEX = 255
TARGET_KEYS = {"depth": "depth", "segmentation": "mask", "normals": "normal"}
RESIZE_MODES = ("cover", "fit")


@dataclass(frozen=True)
class DenseSource:
    """A dense dataset as `DenseDataModule` reads it (one row of `DATASETS`).

    Args:
        tasks: the tasks it has targets for; the first is the default.
        splits: (datamodule hparams, task) -> (train dataset, val dataset).
        needs_root: False for built-in data.
        num_classes: segmentation classes, if it has them.
    """
    tasks: tuple[str, ...]
    splits: Callable[..., tuple[Dataset, Dataset]]
    needs_root: bool = True
    num_classes: int | None = None


@dataclass(frozen=True)
class DenseSample:
    """One image with its target file and, where the layout has one, a file marking the valid target pixels."""
    image: Path
    target: Path
    valid: Path | None = None


# -- geometry -------------------------------------------------------------------------------------------------------
def size_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def center_box(height: int, width: int, size: tuple[int, int]) -> Box:
    """The largest centred box with the aspect ratio of `size`: resizing it never stretches the scene."""
    scale = max(size[0] / height, size[1] / width)
    box_w, box_h = size[1] / scale, size[0] / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return left, top, left + box_w, top + box_h


def fit_shape(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """The largest (h, w) with the image's aspect ratio inside `size` (the whole frame, padded to `size`)."""
    scale = min(size[0] / height, size[1] / width)
    return min(size[0], round(height * scale)), min(size[1], round(width * scale))


PAD_IMAGE = 128  # grey, as MultiMAE pads
PAD_TARGET = {"depth": 0.0, "segmentation": IGNORE_INDEX, "normals": 0.0}  # invalid / ignored


def resize_image(image: Image.Image, size: tuple[int, int], box: Box) -> torch.Tensor:
    """uint8 (3, H, W); Pillow widens the bilinear kernel when shrinking, so this is antialiased."""
    out = to_rgb(image).resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    return torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)


def resize_nearest(array: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """Each output pixel copies the source pixel under its centre (the same pixel-centre mapping as the image
    resize), so only values present in the source come out."""
    left, top, right, bottom = box
    ys = np.floor(top + (np.arange(size[0]) + 0.5) * (bottom - top) / size[0]).astype(np.int64)
    xs = np.floor(left + (np.arange(size[1]) + 0.5) * (right - left) / size[1]).astype(np.int64)
    return array[ys.clip(0, array.shape[0] - 1)[:, None], xs.clip(0, array.shape[1] - 1)[None, :]]


# -- decoding -------------------------------------------------------------------------------------------------------
def read_uint16(path: Path) -> np.ndarray:
    """A 16-bit single-channel PNG as float32; an 8-bit file here would silently give depths 256x too small."""
    image = open_image(path)
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise ConfigError(f"{path} should be a 16-bit single-channel PNG (depth), found mode {image.mode}")
    return np.asarray(image).astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(open_image(path).convert("L"))


def decode_normals(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> unit vectors: [0, 255] -> [-1, 1] per channel, then renormalised (8-bit rounding leaves them
    up to ~0.5 % off unit length). Zero vectors stay zero (invalid)."""
    normal = rgb.astype(np.float32) * (2 / 255) - 1
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    return np.where(norm > 1e-6, normal / np.maximum(norm, 1e-6), 0).astype(np.float32)


def target_tensor(task: str, target: np.ndarray) -> torch.Tensor:
    """depth (1, H, W) float32, segmentation (H, W) int64, normals (3, H, W) float32 from the decoded arrays."""
    if task == "depth":
        return torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None]
    if task == "segmentation":
        return torch.from_numpy(np.ascontiguousarray(target, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).permute(2, 0, 1).contiguous()


# -- datasets -------------------------------------------------------------------------------------------------------
class DenseDataset(Dataset):
    """Image + target files -> items (see the module docstring), or None for a file that cannot be decoded.
    `read_target` must be a module-level function so that loader workers can unpickle the dataset."""

    def __init__(self, samples: list[DenseSample], task: str, size: int | tuple[int, int],
                 read_target: Callable[[DenseSample], np.ndarray], resize: str = "cover"):
        if task not in TARGET_KEYS:
            raise ConfigError(f"task must be one of {sorted(TARGET_KEYS)}, got {task!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.samples, self.task, self.size, self.read_target = list(samples), task, size_hw(size), read_target
        self.resize = resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        try:
            image, target = open_image(sample.image), self.read_target(sample)
        except CorruptImageError as e:
            report_corrupt(e)
            return None
        if target.shape[:2] != (image.height, image.width):
            raise ConfigError(f"{sample.target} is {target.shape[1]}x{target.shape[0]} but its image {sample.image} "
                             f"is {image.width}x{image.height}: targets must match their image pixel for pixel")
        if self.resize == "cover":
            box = center_box(image.height, image.width, self.size)
            return {"image": resize_image(image, self.size, box),
                    TARGET_KEYS[self.task]: target_tensor(self.task, resize_nearest(target, self.size, box)),
                    "index": index}
        # "fit": the whole frame, top-left, padded with grey and with invalid / ignored target pixels
        shape, frame = fit_shape(image.height, image.width, self.size), (0, 0, image.width, image.height)
        canvas = torch.full((3, *self.size), PAD_IMAGE, dtype=torch.uint8)
        canvas[:, :shape[0], :shape[1]] = resize_image(image, shape, frame)
        padded = np.full(self.size + target.shape[2:], PAD_TARGET[self.task], dtype=target.dtype)
        padded[:shape[0], :shape[1]] = resize_nearest(target, shape, frame)
        return {"image": canvas, TARGET_KEYS[self.task]: target_tensor(self.task, padded), "index": index}


class DenseCollate:
    """`collate_images`, plus empty image and target tensors of the item shapes when every item of a batch was
    corrupt, so that code reading batch[<target key>] needs no special case."""

    def __init__(self, task: str, size: int | tuple[int, int]):
        self.task, self.size = task, size_hw(size)

    def __call__(self, items: list[dict | None]) -> dict:
        batch = collate_images(items)
        key = TARGET_KEYS[self.task]
        if key not in batch:
            h, w = self.size
            batch["image"] = torch.zeros(0, 3, h, w, dtype=torch.uint8)
            shape = (h, w, 3) if self.task == "normals" else (h, w)
            batch[key] = target_tensor(self.task, np.zeros(shape))[None][:0]
        return batch


def found(root: Path, limit: int = 8) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{entries[:limit]}{more}" if entries else "nothing (empty or missing)"


def missing_error(kind: str, missing: list[tuple[Path, Path]], layout: str) -> NotFoundError:
    names = ", ".join(f"{image} (expected {target})" for image, target in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return NotFoundError(f"{len(missing)} images have no {kind}: {names}{more}. {layout}")


def pair_samples(images: list[Path], target_of: Callable[[Path], Path], valid_of: Callable[[Path], Path] | None,
          kind: str, layout: str) -> list[DenseSample]:
    """Samples for images whose target exists; any image without one is an error that names it."""
    targets = [target_of(p) for p in images]
    missing = [(p, t) for p, t in zip(images, targets) if not t.is_file()]
    if missing:
        raise missing_error(kind, missing, layout)
    valid = [valid_of(p) if valid_of else None for p in images]
    return [DenseSample(p, t, v if v is not None and v.is_file() else None) for p, t, v in zip(images, targets, valid)]
