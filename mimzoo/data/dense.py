"""Dense downstream data: NYUv2 depth (and normals), ADE20K segmentation, Taskonomy surface normals, and a built-in
real stereo sample, read from the layouts these datasets are distributed in.

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

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .datamodule import BaseDataModule
from .folder import collate_images, list_images, report_corrupt
from .images import CorruptImageError, open_image
from ..errors import ConfigError, NotFoundError

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels

IGNORE_INDEX = 255
ADE20K_NUM_CLASSES = 150
TARGET_KEYS = {"depth": "depth", "segmentation": "mask", "normals": "normal"}
RESIZE_MODES = ("cover", "fit")
DATASET_TASKS = {"nyuv2": ("depth", "normals"), "ade20k": ("segmentation",), "taskonomy": ("normals",),
                 "stereo_sample": ("depth",)}

# NYUv2 depth PNGs are uint16; these are the units per metre each layout wrote them in.
MULTIMAE_DEPTH_PER_METRE = 2**16 / 10  # MultiMAE tools/prepare_nyuv2.py: uint16(depth * 2**16 / 10), 10 m max
BTS_DEPTH_PER_METRE = 1000.0  # BTS: uint16(depth * 1000) written, depth / 1000 read
# Taskonomy: a normal pixel of exactly 128 in every channel marks "no geometry" (Omnidata's mask_val 0.502 = 128/255,
# matched within 1e-3), and so does a z-buffer depth of 65535 (MultiMAE's mask_valid reads it from depth_zbuffer).
TASKONOMY_INVALID_NORMAL = 128
TASKONOMY_NO_DEPTH = 65535
# MultiMAE's Taskonomy val split (utils/taskonomy/splits/tiny_val.csv) uses these buildings
TASKONOMY_TINY_VAL = ("collierville", "corozal", "darden", "markleeville")

NYUV2_LAYOUTS = (
    "accepted NYUv2 layouts:\n"
    "  MultiMAE (tools/prepare_nyuv2.py): <root>/train/rgb/data/0000.png + <root>/train/depth/data/0000.png "
    "(uint16, metres * 6553.6), the same under <root>/test/ (or val/); optional normal/ + mask/ for normals, "
    "mask_valid/ for depth\n"
    "  BTS: <root>/sync/<scene>/rgb_00000.jpg + sync_depth_00000.png (uint16 millimetres) for training and "
    "<root>/official_splits/test/<scene>/rgb_00000.jpg + sync_depth_00000.png for testing (<root> may also be the "
    "sync folder itself, next to official_splits/)")
ADE20K_LAYOUT = ("ADE20K layout: ADEChallengeData2016/images/{training,validation}/ADE_*.jpg + "
                 "ADEChallengeData2016/annotations/{training,validation}/ADE_*.png")
TASKONOMY_LAYOUT = ("Taskonomy layout: <root>/rgb/<building>/point_<i>_view_<j>_domain_rgb.png + "
                    "<root>/normal/<building>/point_<i>_view_<j>_domain_normal.png "
                    "(optional <root>/depth_zbuffer/<building>/point_<i>_view_<j>_domain_depth_zbuffer.png)")


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
    out = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
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


def read_multimae_depth(sample: DenseSample) -> np.ndarray:
    depth = read_uint16(sample.target) / MULTIMAE_DEPTH_PER_METRE
    if sample.valid is not None:
        depth[read_mask(sample.valid) != 255] = 0  # MultiMAE: mask_valid == 255 is valid
    return depth


def read_bts_depth(sample: DenseSample) -> np.ndarray:
    return read_uint16(sample.target) / BTS_DEPTH_PER_METRE  # raw depth holes are 0 already


def read_nyu_normals(sample: DenseSample) -> np.ndarray:
    normal = decode_normals(np.asarray(open_image(sample.target).convert("RGB")))
    if sample.valid is not None:
        normal[read_mask(sample.valid) == 0] = 0  # the normals mask (ROCK / MultiMAE): non-zero is valid
    return normal


def read_ade_labels(sample: DenseSample) -> np.ndarray:
    """reduce_zero_label (mmseg, MultiMAE's seg_reduce_zero_label): 0 "other" -> ignore, k -> k - 1 for the 150
    classes; anything else (255 included) -> ignore."""
    image = open_image(sample.target)
    raw = np.asarray(image).astype(np.int64)  # palette ("P") files hold the class ids as indices: no conversion
    if raw.ndim != 2:
        raise ConfigError(f"{sample.target} should be a single-channel label PNG, found mode {image.mode}")
    return np.where((raw >= 1) & (raw <= ADE20K_NUM_CLASSES), raw - 1, IGNORE_INDEX)


def read_taskonomy_normals(sample: DenseSample) -> np.ndarray:
    """The file's camera frame is kept, as MultiMAE does (Omnidata's loader flips x and y into PyTorch3D's)."""
    rgb = np.asarray(open_image(sample.target).convert("RGB"))
    normal = decode_normals(rgb)
    invalid = (rgb == TASKONOMY_INVALID_NORMAL).all(-1)
    if sample.valid is not None:
        zbuffer = read_uint16(sample.valid)
        if zbuffer.shape != invalid.shape:
            raise ConfigError(f"{sample.valid} is {zbuffer.shape[1]}x{zbuffer.shape[0]} but {sample.target} is "
                             f"{invalid.shape[1]}x{invalid.shape[0]}")
        invalid |= zbuffer >= TASKONOMY_NO_DEPTH
    normal[invalid] = 0
    return normal


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


def _found(root: Path, limit: int = 8) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{entries[:limit]}{more}" if entries else "nothing (empty or missing)"


def _missing_error(kind: str, missing: list[tuple[Path, Path]], layout: str) -> NotFoundError:
    names = ", ".join(f"{image} (expected {target})" for image, target in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return NotFoundError(f"{len(missing)} images have no {kind}: {names}{more}. {layout}")


def _pair(images: list[Path], target_of: Callable[[Path], Path], valid_of: Callable[[Path], Path] | None,
          kind: str, layout: str) -> list[DenseSample]:
    """Samples for images whose target exists; any image without one is an error that names it."""
    targets = [target_of(p) for p in images]
    missing = [(p, t) for p, t in zip(images, targets) if not t.is_file()]
    if missing:
        raise _missing_error(kind, missing, layout)
    valid = [valid_of(p) if valid_of else None for p in images]
    return [DenseSample(p, t, v if v is not None and v.is_file() else None) for p, t, v in zip(images, targets, valid)]


# NYUv2 -------------------------------------------------------------------------------------------------------------
def _bts_scenes(folder: Path) -> bool:
    return folder.is_dir() and next(folder.glob("*/rgb_*.jpg"), None) is not None


def _bts_dirs(root: Path) -> tuple[Path, Path] | None:
    """(train folder, test folder) of a BTS tree rooted at nyu_depth_v2/ or at its sync/ folder."""
    train = root / "sync" if _bts_scenes(root / "sync") else root if _bts_scenes(root) else None
    if train is None:
        return None
    test = next((d for d in (root / "official_splits" / "test", train.parent / "official_splits" / "test")
                 if d.is_dir()), root / "official_splits" / "test")
    return train, test


def nyuv2_layout(root: str | os.PathLike) -> str:
    """The layout of an NYUv2 copy: "multimae" or "bts"; otherwise FileNotFoundError listing the accepted layouts
    and what the root holds."""
    root = Path(root)
    if (root / "train" / "rgb").is_dir():
        return "multimae"
    if _bts_dirs(root) is not None:
        return "bts"
    raise NotFoundError(f"{root} is not an NYUv2 copy in a known layout; {NYUV2_LAYOUTS}\n"
                            f"found at {root}: {_found(root)}")


def _multimae_split(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name / "rgb").is_dir():
            return root / name
    raise NotFoundError(f"no {' or '.join(f'{root / n}/rgb/' for n in names)} for the {split} split; "
                            f"{NYUV2_LAYOUTS}\nfound at {root}: {_found(root)}")


def list_nyuv2(root: str | os.PathLike, split: str = "train", task: str = "depth") -> tuple[list[DenseSample], str]:
    """(samples, layout). split "train", or "val"/"test" (NYUv2's official 654-image test split)."""
    root, layout = Path(root), nyuv2_layout(root)
    if layout == "bts":
        if task != "depth":
            raise ConfigError(f"the BTS layout at {root} has depth only; normals need the MultiMAE layout "
                             f"(<root>/train/normal/data/0000.png). {NYUV2_LAYOUTS}")
        train, test = _bts_dirs(root)
        folder = train if split == "train" else test
        if not folder.is_dir():
            raise NotFoundError(f"no BTS test split at {folder}; {NYUV2_LAYOUTS}")
        images = [p for p in list_images(folder) if p.name.startswith("rgb_") and p.suffix == ".jpg"]
        return _pair(images, lambda p: p.with_name(p.name.replace("rgb_", "sync_depth_", 1)).with_suffix(".png"),
                     None, "sync_depth_*.png depth", NYUV2_LAYOUTS), layout
    folder = _multimae_split(root, split)
    target, valid = ("depth", "mask_valid") if task == "depth" else ("normal", "mask")
    rgb = folder / "rgb"
    if not (folder / target).is_dir():
        raise NotFoundError(f"{folder / target} is missing: the {task} task needs {folder}/{target}/data/*.png "
                                f"next to {rgb}; found at {folder}: {_found(folder)}. {NYUV2_LAYOUTS}")

    def beside(kind: str) -> Callable[[Path], Path]:
        return lambda p: (folder / kind / p.relative_to(rgb)).with_suffix(".png")

    return _pair(list_images(rgb), beside(target), beside(valid), f"{target} PNG", NYUV2_LAYOUTS), layout


def nyuv2_dataset(root: str | os.PathLike, split: str = "train", task: str = "depth",
                  size: int | tuple[int, int] = 256, resize: str = "cover") -> DenseDataset:
    """NYUv2 depth (either layout) or normals (MultiMAE layout); the layout is detected from the files."""
    samples, layout = list_nyuv2(root, split, task)
    reader = read_nyu_normals if task == "normals" else read_bts_depth if layout == "bts" else read_multimae_depth
    return DenseDataset(samples, task, size, reader, resize)


# ADE20K ------------------------------------------------------------------------------------------------------------
def list_ade20k(root: str | os.PathLike, split: str = "train") -> list[DenseSample]:
    """`root` is ADEChallengeData2016/ or the folder holding it; split "train" (training) or "val" (validation)."""
    root = Path(root)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    name = "training" if split == "train" else "validation"
    images, labels = base / "images" / name, base / "annotations" / name
    for folder in (images, labels):
        if not folder.is_dir():
            raise NotFoundError(f"{folder} is missing; expected the {ADE20K_LAYOUT}; "
                                    f"found at {base}: {_found(base)}")
    files = [p for p in list_images(images) if p.suffix.lower() in (".jpg", ".jpeg")]
    return _pair(files, lambda p: (labels / p.relative_to(images)).with_suffix(".png"), None, "annotation",
                 ADE20K_LAYOUT)


def ade20k_dataset(root: str | os.PathLike, split: str = "train", size: int | tuple[int, int] = 512,
                   resize: str = "cover") -> DenseDataset:
    return DenseDataset(list_ade20k(root, split), "segmentation", size, read_ade_labels, resize)


# Taskonomy ---------------------------------------------------------------------------------------------------------
def taskonomy_buildings(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    for domain in ("rgb", "normal"):
        if not (root / domain).is_dir():
            raise NotFoundError(f"{root / domain} is missing; expected the {TASKONOMY_LAYOUT}; "
                                    f"found at {root}: {_found(root)}")
    buildings = sorted(p.name for p in (root / "rgb").iterdir() if p.is_dir())
    if not buildings:
        raise NotFoundError(f"{root / 'rgb'} has no building folders; expected the {TASKONOMY_LAYOUT}; "
                                f"found: {_found(root / 'rgb')}")
    return buildings


def list_taskonomy(root: str | os.PathLike, buildings: list[str] | None = None) -> list[DenseSample]:
    root = Path(root)
    found = taskonomy_buildings(root)
    unknown = sorted(set(buildings or ()) - set(found))
    if unknown:
        raise ConfigError(f"buildings {unknown[:5]} are not under {root / 'rgb'}; found {found[:10]}"
                         f"{' ...' if len(found) > 10 else ''}")
    images = []
    for building in buildings or found:
        images += [p for p in list_images(root / "rgb" / building) if p.name.endswith("_domain_rgb.png")]
    if not images:
        raise NotFoundError(f"no *_domain_rgb.png under {root / 'rgb'}; expected the {TASKONOMY_LAYOUT}")

    def domain(p: Path, name: str) -> Path:
        return root / name / p.parent.name / p.name.replace("_domain_rgb.png", f"_domain_{name}.png")

    return _pair(images, lambda p: domain(p, "normal"), lambda p: domain(p, "depth_zbuffer"), "normal map",
                 TASKONOMY_LAYOUT)


def taskonomy_dataset(root: str | os.PathLike, buildings: list[str] | None = None,
                      size: int | tuple[int, int] = 256, resize: str = "cover") -> DenseDataset:
    """Surface normals of the given buildings (default: every building found)."""
    return DenseDataset(list_taskonomy(root, buildings), "normals", size, read_taskonomy_normals, resize)


def taskonomy_split(root: str | os.PathLike, buildings: list[str] | None = None,
                    val_buildings: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(train, val) buildings. Val defaults to MultiMAE's tiny-split val buildings found here, else the last
    building; train defaults to every other building. The two never share a building."""
    found = taskonomy_buildings(root)
    if val_buildings is None:
        pool = [b for b in found if b not in set(buildings or ())]
        val_buildings = [b for b in pool if b in TASKONOMY_TINY_VAL] or pool[-1:]
    train = buildings or [b for b in found if b not in set(val_buildings)]
    shared = sorted(set(train) & set(val_buildings))
    if not train or not val_buildings or shared:
        raise ConfigError(f"Taskonomy needs disjoint, non-empty train and val buildings; got train {train[:5]}, "
                         f"val {list(val_buildings)[:5]} (shared: {shared[:5]}) from {found[:10]}")
    return train, list(val_buildings)


# -- the built-in stereo sample -------------------------------------------------------------------------------------
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


# -- datamodule -----------------------------------------------------------------------------------------------------
class DenseDataModule(BaseDataModule):
    """Dense fine-tuning data. dataset: "nyuv2" (depth or normals), "ade20k" (segmentation, 150 classes),
    "taskonomy" (normals), or "stereo_sample" (depth, built in: `root` is not used). task defaults to the dataset's
    first. size: int or [H, W]; train_size: the training items' size when it differs (e.g. [256, 341], the whole
    640 x 480 NYUv2 frame at short side 256, for the method's random 256 crops as MultiMAE trains). resize:
    "cover" (centre box of the target aspect, no padding) or "fit" (the whole frame, padded: MultiMAE's
    ADE20K longest-side resize). buildings / val_buildings: Taskonomy's split (see `taskonomy_split`).
    num_crops: training crops of the stereo sample. Batches hold "image" uint8, the task's target ("depth",
    "mask" or "normal"), "index"; augmentation belongs on the device, in the method."""

    def __init__(self, dataset: str = "stereo_sample", root: str | None = None, task: str | None = None,
                 size: int | tuple[int, int] = 256, batch_size: int = 8, num_workers: int = 4, seed: int = 0,
                 pin_memory: bool = True, buildings: list[str] | None = None,
                 val_buildings: list[str] | None = None, num_crops: int = 32,
                 train_size: int | tuple[int, int] | None = None, resize: str = "cover"):
        super().__init__()
        if dataset not in DATASET_TASKS:
            raise ConfigError(f"dataset must be one of {sorted(DATASET_TASKS)}, got {dataset!r}")
        task = task or DATASET_TASKS[dataset][0]
        if task not in DATASET_TASKS[dataset]:
            raise ConfigError(f"{dataset} supports the tasks {list(DATASET_TASKS[dataset])}, got {task!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if root is None and dataset != "stereo_sample":
            raise ConfigError(f"{dataset} needs root: the folder holding your local copy")
        # `task` stays out: LightningCLI records the given (possibly empty) value, which would clash with the
        # method's resolved `task` when Lightning merges both into the logged hparams
        self.save_hyperparameters(ignore=["task"])
        self.batch_size, self.task = batch_size, task
        self.num_classes = ADE20K_NUM_CLASSES if dataset == "ade20k" else None

    def _datasets(self) -> tuple[Dataset, Dataset]:
        hp = self.hparams
        sizes = {"train": hp.train_size or hp.size, "val": hp.size}
        if hp.dataset == "stereo_sample":
            return tuple(StereoSampleDataset(s, sizes[s], hp.seed, hp.num_crops) for s in ("train", "val"))
        if hp.dataset == "nyuv2":
            return tuple(nyuv2_dataset(hp.root, s, self.task, sizes[s], hp.resize) for s in ("train", "val"))
        if hp.dataset == "ade20k":
            return tuple(ade20k_dataset(hp.root, s, sizes[s], hp.resize) for s in ("train", "val"))
        train, val = taskonomy_split(hp.root, hp.buildings, hp.val_buildings)
        return (taskonomy_dataset(hp.root, train, sizes["train"], hp.resize),
                taskonomy_dataset(hp.root, val, sizes["val"], hp.resize))

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set = self._datasets()

    def loader_kwargs(self) -> dict:
        return {**super().loader_kwargs(), "collate_fn": DenseCollate(self.task, self.hparams.size)}

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, **self.loader_kwargs())
