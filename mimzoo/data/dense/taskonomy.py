"""Taskonomy surface normals (MultiMAE's protocol: the file's camera frame, split by building)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import ConfigError, NotFoundError
from ..folder import list_images
from ..images import open_image
from .common import DenseDataset, DenseSample, DenseSource, decode_normals, found, pair_samples, read_uint16

# A normal pixel of exactly 128 in every channel marks "no geometry" (Omnidata's mask_val 0.502 = 128/255, matched
# within 1e-3), and so does a z-buffer depth of 65535 (MultiMAE's mask_valid reads it from depth_zbuffer).
TASKONOMY_INVALID_NORMAL = 128
TASKONOMY_NO_DEPTH = 65535
# MultiMAE's Taskonomy val split (utils/taskonomy/splits/tiny_val.csv) uses these buildings
TASKONOMY_TINY_VAL = ("collierville", "corozal", "darden", "markleeville")
TASKONOMY_LAYOUT = ("Taskonomy layout: <root>/rgb/<building>/point_<i>_view_<j>_domain_rgb.png + "
                    "<root>/normal/<building>/point_<i>_view_<j>_domain_normal.png "
                    "(optional <root>/depth_zbuffer/<building>/point_<i>_view_<j>_domain_depth_zbuffer.png)")


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


def taskonomy_buildings(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    for domain in ("rgb", "normal"):
        if not (root / domain).is_dir():
            raise NotFoundError(f"{root / domain} is missing; expected the {TASKONOMY_LAYOUT}; "
                                    f"found at {root}: {found(root)}")
    buildings = sorted(p.name for p in (root / "rgb").iterdir() if p.is_dir())
    if not buildings:
        raise NotFoundError(f"{root / 'rgb'} has no building folders; expected the {TASKONOMY_LAYOUT}; "
                                f"found: {found(root / 'rgb')}")
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

    return pair_samples(images, lambda p: domain(p, "normal"), lambda p: domain(p, "depth_zbuffer"), "normal map",
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


def splits(hp, task: str) -> tuple[DenseDataset, DenseDataset]:
    train, val = taskonomy_split(hp.root, hp.buildings, hp.val_buildings)
    return (taskonomy_dataset(hp.root, train, hp.train_size or hp.size, hp.resize),
            taskonomy_dataset(hp.root, val, hp.size, hp.resize))


SOURCE = DenseSource(tasks=("normals",), splits=splits)
