"""ADE20K semantic segmentation (ADEChallengeData2016, 150 classes, reduce-zero-label)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import ConfigError, NotFoundError
from ..folder import list_images
from ..images import open_image
from .common import IGNORE_INDEX, DenseDataset, DenseSample, DenseSource, found, pair_samples

ADE20K_NUM_CLASSES = 150
ADE20K_LAYOUT = ("ADE20K layout: ADEChallengeData2016/images/{training,validation}/ADE_*.jpg + "
                 "ADEChallengeData2016/annotations/{training,validation}/ADE_*.png")


def read_ade_labels(sample: DenseSample) -> np.ndarray:
    """reduce_zero_label (mmseg, MultiMAE's seg_reduce_zero_label): 0 "other" -> ignore, k -> k - 1 for the 150
    classes; anything else (255 included) -> ignore."""
    image = open_image(sample.target)
    raw = np.asarray(image).astype(np.int64)  # palette ("P") files hold the class ids as indices: no conversion
    if raw.ndim != 2:
        raise ConfigError(f"{sample.target} should be a single-channel label PNG, found mode {image.mode}")
    return np.where((raw >= 1) & (raw <= ADE20K_NUM_CLASSES), raw - 1, IGNORE_INDEX)


def list_ade20k(root: str | os.PathLike, split: str = "train") -> list[DenseSample]:
    """`root` is ADEChallengeData2016/ or the folder holding it; split "train" (training) or "val" (validation)."""
    root = Path(root)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    name = "training" if split == "train" else "validation"
    images, labels = base / "images" / name, base / "annotations" / name
    for folder in (images, labels):
        if not folder.is_dir():
            raise NotFoundError(f"{folder} is missing; expected the {ADE20K_LAYOUT}; "
                                    f"found at {base}: {found(base)}")
    files = [p for p in list_images(images) if p.suffix.lower() in (".jpg", ".jpeg")]
    return pair_samples(files, lambda p: (labels / p.relative_to(images)).with_suffix(".png"), None, "annotation",
                 ADE20K_LAYOUT)


def ade20k_dataset(root: str | os.PathLike, split: str = "train", size: int | tuple[int, int] = 512,
                   resize: str = "cover") -> DenseDataset:
    return DenseDataset(list_ade20k(root, split), "segmentation", size, read_ade_labels, resize)


def splits(hp, task: str) -> tuple[DenseDataset, DenseDataset]:
    return (ade20k_dataset(hp.root, "train", hp.train_size or hp.size, hp.resize),
            ade20k_dataset(hp.root, "val", hp.size, hp.resize))


SOURCE = DenseSource(tasks=("segmentation",), splits=splits, num_classes=ADE20K_NUM_CLASSES)
