"""Pairs of views for cross-view completion: MIMIC curation shards (read in `shards.py`), MIMIC's released folders
and CSV index, plain pair folders, and a built-in sample set (a real stereo pair and known homography warps of
photos)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, NotFoundError
from .datamodule import BaseDataModule
from .folder import report_corrupt
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image
from .shards import is_shards, jpeg, shard_loader


# -- sources --------------------------------------------------------------------------------------------------------
def find_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """MIMIC's layout (`.../<pair>/0000.jpg` + `0001.jpg`, DeMoN's sequences likewise; `corresponding.npy` is a
    pickle and is never read), or plain pair folders holding exactly two images (sorted names = A, B)."""
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"pair folder {root} does not exist")
    pairs = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if (folder / "0000.jpg").is_file() and (folder / "0001.jpg").is_file():
            pairs.append((folder / "0000.jpg", folder / "0001.jpg"))
        elif len(images) == 2:
            pairs.append((images[0], images[1]))
    if not pairs:
        raise NotFoundError(f"no pairs under {root}: expected folders holding 0000.jpg + 0001.jpg (MIMIC) or "
                                f"exactly two images each")
    return pairs


def read_pair_csv(path: str | os.PathLike, base: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """MIMIC's index (columns path1, path2; relative paths are taken from `base`, default the CSV's folder)."""
    path = Path(path)
    base = Path(base) if base else path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"path1", "path2"} <= set(reader.fieldnames or ()):
            raise ConfigError(f"{path} needs the columns path1 and path2 (MIMIC's CSV), found {reader.fieldnames}")
        return [(base / row["path1"], base / row["path2"]) for row in reader]


class PairDataset(Dataset):
    """Items {"image": view A, "image2": view B, "index"} (uint8, size x size), or None if a view is corrupt."""

    def __init__(self, pairs: list[tuple[Path, Path]], size: int = 224):
        self.pairs, self.size = pairs, size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict | None:
        a, b = self.pairs[index]
        try:
            return {"image": decode_image(a, self.size), "image2": decode_image(b, self.size), "index": index}
        except CorruptImageError as e:
            report_corrupt(e)
            return None








# -- the built-in sample pairs --------------------------------------------------------------------------------------
def _homography(rng: np.random.Generator, size: int) -> np.ndarray:
    """A moderate camera motion about the image centre: rotation, zoom, shift, a little perspective."""
    c = size / 2
    angle, zoom = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(0.85, 1.2)
    shift = rng.uniform(-0.12, 0.12, 2) * size
    rot = np.array([[zoom * np.cos(angle), -zoom * np.sin(angle), 0], [zoom * np.sin(angle), zoom * np.cos(angle), 0],
                    [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [*rng.uniform(-3e-4, 3e-4, 2), 1]])
    to_c = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]])
    from_c = np.array([[1, 0, c + shift[0]], [0, 1, c + shift[1]], [0, 0, 1]])
    return from_c @ persp @ rot @ to_c


def sample_pairs(seed: int = 0, size: int = 224,
                 warps_per_photo: int = 2) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """(key, A, B, record): the scikit-image stereo pair, and homography warps of its photos (B = A warped by H)."""
    import cv2

    from .images import square_uint8
    from .sample import sample_images

    photos = dict(sample_images())
    square = lambda a: square_uint8(a, size).permute(1, 2, 0).numpy()  # noqa: E731
    out = [("motorcycle_stereo", square(photos.pop("motorcycle_left")), square(photos.pop("motorcycle_right")),
            {"source": "skimage.data.stereo_motorcycle", "frame_a": 0, "frame_b": 1, "time_a": None, "time_b": None,
             "overlap": None, "homography": None, "num_matches": None, "num_inliers": None})]
    rng = np.random.default_rng(seed)
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        a = square(photos[name])
        for k in range(warps_per_photo):
            h = _homography(rng, size)
            b = cv2.warpPerspective(a, h, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            out.append((f"{name}_{k}", a, b, {"source": f"skimage.data.{name}", "frame_a": 0, "frame_b": k + 1,
                                              "time_a": None, "time_b": None, "overlap": None,
                                              "homography": h.tolist(), "num_matches": None, "num_inliers": None}))
    return out


def sample_pair_folder(root: str | os.PathLike | None = None) -> Path:
    """Write the sample pairs once in MIMIC's folder layout (<key>/0000.jpg, 0001.jpg, pair.json)."""
    from ..download import cache_dir

    folder = Path(root) if root else cache_dir() / "mimzoo-sample-pairs"
    if (folder / "done").exists():
        return folder
    for key, a, b, record in sample_pairs():
        (folder / key).mkdir(parents=True, exist_ok=True)
        for name, data in (("0000.jpg", jpeg(a)), ("0001.jpg", jpeg(b)), ("pair.json", json.dumps(record).encode())):
            tmp = folder / key / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / key / name)
    (folder / "done").touch()
    return folder


class PairDataModule(BaseDataModule):
    """data: "sample" (built-in pairs), pair shards ("pairs-{000..009}.tar", what `mimzoo curate` writes), a folder
    (MIMIC's released layout or plain pair folders) or MIMIC's CSV index. Batches {"image", "image2", "index"} as
    uint8; the method's pair views augment them on the device. Folder and CSV sources resume mid-epoch exactly;
    shard streams restart their shuffle. Shards: every process and loader worker reads its own whole shards, and
    an epoch is the same number of full batches on each (`shards.train_epoch`); epoch_size: pairs per epoch, all
    processes together (default: one pass, counted from curation's records)."""

    def __init__(self, data: str = "sample", val_data: str | None = None, csv_base: str | None = None,
                 size: int = 224, batch_size: int = 64, num_workers: int = 2, repeats: int = 1, val_every: int = 50,
                 seed: int = 0, pin_memory: bool = True, shuffle_buffer: int = 2000, epoch_size: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def _pairs(self, data: str) -> list[tuple[Path, Path]]:
        if data == "sample":
            return find_pairs(sample_pair_folder())
        if data.endswith(".csv"):
            return read_pair_csv(data, self.hparams.csv_base)
        return find_pairs(data)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if is_shards(hp.data):
            return
        pairs = self._pairs(hp.data)
        every = 6 if hp.data == "sample" else hp.val_every
        self.val_pairs = self._pairs(hp.val_data) if hp.val_data else pairs[every - 1::every]
        held = set(self.val_pairs)
        self.train_pairs = [p for p in pairs if p not in held]

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if is_shards(hp.data):
            return shard_loader(hp.data, hp.size, hp.batch_size, hp.shuffle_buffer, hp.epoch_size, pairs=True,
                                train=True, **self.loader_kwargs())
        return self.resumable_loader(PairDataset(self.train_pairs * hp.repeats, hp.size))

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        if is_shards(hp.data):
            if not hp.val_data:
                return []
            return shard_loader(hp.val_data, hp.size, hp.batch_size, pairs=True, **self.loader_kwargs())
        return DataLoader(PairDataset(self.val_pairs, hp.size), batch_size=hp.batch_size, **self.loader_kwargs())
