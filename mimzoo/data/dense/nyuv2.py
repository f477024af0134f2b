"""NYUv2 depth (and normals) in the two layouts it is distributed in: MultiMAE's (`tools/prepare_nyuv2.py`) and
BTS's (`sync/` + `official_splits/test/`), detected from the files."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...errors import ConfigError, NotFoundError
from ..folder import list_images
from ..images import open_image
from .common import DenseDataset, DenseSample, DenseSource, decode_normals, found, pair_samples, read_mask, read_uint16

# NYUv2 depth PNGs are uint16; these are the units per metre each layout wrote them in.
MULTIMAE_DEPTH_PER_METRE = 2**16 / 10  # MultiMAE tools/prepare_nyuv2.py: uint16(depth * 2**16 / 10), 10 m max
BTS_DEPTH_PER_METRE = 1000.0  # BTS: uint16(depth * 1000) written, depth / 1000 read

NYUV2_LAYOUTS = (
    "accepted NYUv2 layouts:\n"
    "  MultiMAE (tools/prepare_nyuv2.py): <root>/train/rgb/data/0000.png + <root>/train/depth/data/0000.png "
    "(uint16, metres * 6553.6), the same under <root>/test/ (or val/); optional normal/ + mask/ for normals, "
    "mask_valid/ for depth\n"
    "  BTS: <root>/sync/<scene>/rgb_00000.jpg + sync_depth_00000.png (uint16 millimetres) for training and "
    "<root>/official_splits/test/<scene>/rgb_00000.jpg + sync_depth_00000.png for testing (<root> may also be the "
    "sync folder itself, next to official_splits/)")


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
                            f"found at {root}: {found(root)}")


def _multimae_split(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name / "rgb").is_dir():
            return root / name
    raise NotFoundError(f"no {' or '.join(f'{root / n}/rgb/' for n in names)} for the {split} split; "
                            f"{NYUV2_LAYOUTS}\nfound at {root}: {found(root)}")


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
        return pair_samples(images, lambda p: p.with_name(p.name.replace("rgb_", "sync_depth_", 1)).with_suffix(".png"),
                     None, "sync_depth_*.png depth", NYUV2_LAYOUTS), layout
    folder = _multimae_split(root, split)
    target, valid = ("depth", "mask_valid") if task == "depth" else ("normal", "mask")
    rgb = folder / "rgb"
    if not (folder / target).is_dir():
        raise NotFoundError(f"{folder / target} is missing: the {task} task needs {folder}/{target}/data/*.png "
                                f"next to {rgb}; found at {folder}: {found(folder)}. {NYUV2_LAYOUTS}")

    def beside(kind: str) -> Callable[[Path], Path]:
        return lambda p: (folder / kind / p.relative_to(rgb)).with_suffix(".png")

    return pair_samples(list_images(rgb), beside(target), beside(valid), f"{target} PNG", NYUV2_LAYOUTS), layout


def nyuv2_dataset(root: str | os.PathLike, split: str = "train", task: str = "depth",
                  size: int | tuple[int, int] = 256, resize: str = "cover") -> DenseDataset:
    """NYUv2 depth (either layout) or normals (MultiMAE layout); the layout is detected from the files."""
    samples, layout = list_nyuv2(root, split, task)
    reader = read_nyu_normals if task == "normals" else read_bts_depth if layout == "bts" else read_multimae_depth
    return DenseDataset(samples, task, size, reader, resize)


def splits(hp, task: str) -> tuple[DenseDataset, DenseDataset]:
    return (nyuv2_dataset(hp.root, "train", task, hp.train_size or hp.size, hp.resize),
            nyuv2_dataset(hp.root, "val", task, hp.size, hp.resize))


SOURCE = DenseSource(tasks=("depth", "normals"), splits=splits)
