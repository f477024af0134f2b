"""The built-in real depth sample: the Middlebury 2014 Motorcycle stereo pair that ships with scikit-image, its
disparity turned into metres with the scene's calibration; training crops and held-out tiles never overlap."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ...errors import ConfigError
from .common import Box, DenseSource, resize_image, resize_nearest, size_hw, target_tensor

# Middlebury 2014 "Motorcycle" calib.txt (full resolution): cam0 f = 3979.911 px, doffs = cx1 - cx0 = 1369.115 -
# 1244.772 = 124.343 px, baseline = 193.001 mm, width = 2964 px. scikit-image ships it downscaled 4x (741 px wide);
# its disparities are in those pixels (7.2 - 59.9, the full-res vmin/vmax 23/245 divided by 4).
MOTORCYCLE_FOCAL_PX = 3979.911
MOTORCYCLE_DOFFS_PX = 124.343
MOTORCYCLE_BASELINE_M = 0.193001
MOTORCYCLE_WIDTH_PX = 2964


@lru_cache(maxsize=1)
def stereo_depth() -> tuple[np.ndarray, np.ndarray]:
    """(left image uint8 (500, 741, 3), metric depth float32 (500, 741), 0 = invalid) of scikit-image's
    `stereo_motorcycle`. Z = baseline * f / (d + doffs) with f and doffs scaled by 741 / 2964 = 0.25
    (f = 994.978 px, doffs = 31.086 px, the values in scikit-image's docstring): depths run 2.1 - 5.0 m.
    Only the left view has ground truth, so the right image is not used."""
    from skimage import data

    left, _right, disparity = data.stereo_motorcycle()
    scale = left.shape[1] / MOTORCYCLE_WIDTH_PX
    focal, doffs = MOTORCYCLE_FOCAL_PX * scale, MOTORCYCLE_DOFFS_PX * scale
    disparity = np.asarray(disparity, dtype=np.float64)
    valid = np.isfinite(disparity) & (disparity > 0)
    depth = np.zeros(disparity.shape, np.float32)
    depth[valid] = MOTORCYCLE_BASELINE_M * focal / (disparity[valid] + doffs)
    return left, depth


def stereo_boxes(split: str, size: int | tuple[int, int] = 256, seed: int = 0, num_crops: int = 32,
                 frame: tuple[int, int] = (500, 741)) -> list[Box]:
    """Crop boxes with the aspect ratio of `size`. The right-most quarter of the frame is held out: "val" tiles it
    top to bottom in half-overlapping tiles, "train" draws `num_crops` random boxes (30 - 60 % of the frame height,
    seeded) left of it."""
    (out_h, out_w), (height, width) = size_hw(size), frame
    aspect, split_x = out_w / out_h, width - width // 4
    if split == "train":
        rng = np.random.default_rng(seed)
        max_h = min(height, split_x / aspect)
        boxes = []
        for _ in range(num_crops):
            h = rng.uniform(0.3, 0.6) * max_h  # around the held-out tiles' scale (0.37 of the height)
            w = h * aspect
            left, top = rng.uniform(0, split_x - w), rng.uniform(0, height - h)
            boxes.append((left, top, left + w, top + h))
        return boxes
    w = min(width - split_x, height * aspect)
    h = w / aspect
    left = split_x + (width - split_x - w) / 2
    # overlapping tiles (half a box apart): more held-out views of the same unseen region
    tops = np.linspace(0, height - h, max(1, math.ceil(2 * height / h - 1 - 1e-9)))
    return [(left, float(top), left + w, float(top) + h) for top in tops]


class StereoSampleDataset(Dataset):
    """Depth items cut from the real Middlebury Motorcycle stereo pair that ships with scikit-image: a quick
    example that needs no download. train: `num_crops` seeded random crops; val: the held-out right quarter
    (`boxes` holds each item's source box, train and val boxes never overlap)."""

    def __init__(self, split: str = "train", size: int | tuple[int, int] = 256, seed: int = 0, num_crops: int = 32):
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        self.task, self.size = "depth", size_hw(size)
        left, _ = stereo_depth()
        self.boxes = stereo_boxes(split, size, seed, num_crops, left.shape[:2])

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> dict:
        left, depth = stereo_depth()
        box = self.boxes[index]
        return {"image": resize_image(Image.fromarray(left), self.size, box),
                "depth": target_tensor("depth", resize_nearest(depth, self.size, box)), "index": index}


def splits(hp, task: str) -> tuple[StereoSampleDataset, StereoSampleDataset]:
    return (StereoSampleDataset("train", hp.train_size or hp.size, hp.seed, hp.num_crops),
            StereoSampleDataset("val", hp.size, hp.seed, hp.num_crops))


SOURCE = DenseSource(tasks=("depth",), splits=splits, needs_root=False)
