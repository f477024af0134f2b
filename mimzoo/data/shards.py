"""WebDataset tar shards, read and written in one place: image shards (every image of a sample is an item) and
MIMIC pair shards (what `mimzoo curate` writes; read as pairs for cross-view completion, or as images for MAE, which
is how MIMIC trains MAE on its pairs). Bad samples are skipped and counted.

Pair record (one WebDataset sample per pair):
  `0.jpg`  view A, 224 x 224 RGB            `1.jpg`  view B
  `json`   {"source", "frame_a", "frame_b", "time_a", "time_b", "overlap" (0-1), "homography" (3 x 3, A -> B in
           224 x 224 pixels), "num_matches", "num_inliers"}
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from ..checkpoint import atomic_path
from .folder import collate_images, report_corrupt
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image

EXTENSIONS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
PAIR_KEYS = ("0.jpg", "1.jpg", "json")


def sample_index(name: str) -> int:
    """A stream has no positions: a sample's "index" is a 62-bit digest of its shard and key (and image key), the
    same in every epoch and worker, so methods that tell samples apart by index (MIM-Refiner's queue) can."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 2


def is_shards(data: str) -> bool:
    """The one rule for "this `data` argument names WebDataset shards": a .tar path, a brace pattern of them
    ("pairs-{000..009}.tar") or several sources joined with "::" (WebDataset's separator)."""
    return data.endswith(".tar") or ".tar}" in data or "::" in data


class PairRecord(TypedDict):
    source: str
    frame_a: int
    frame_b: int
    time_a: float | None
    time_b: float | None
    overlap: float
    homography: list[list[float]]
    num_matches: int
    num_inliers: int


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="jpeg", quality=quality)
    return buf.getvalue()


def write_pair_shard(path: str | os.PathLike, samples: Iterable[tuple[str, np.ndarray, np.ndarray, dict]]) -> Path:
    """Write (key, view A, view B, record) samples as one tar, under a temporary name renamed at the end: a killed
    writer never leaves a partial shard under the final name."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with wds.TarWriter(str(tmp)) as sink:
            for key, a, b, record in samples:
                sink.write({"__key__": key, "0.jpg": jpeg(a), "1.jpg": jpeg(b), "json": json.dumps(record).encode()})
    return path


# -- image shards ---------------------------------------------------------------------------------------------------
def _images(size: int):
    def split(samples):
        for sample in samples:
            name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            keys = sorted(k for k in sample if k.rsplit(".", 1)[-1].lower() in EXTENSIONS)
            if not keys:
                report_corrupt(CorruptImageError(name, f"no image in the sample; keys are {sorted(sample)}"))
                yield {"image": None}
            for key in keys:
                try:
                    yield {"image": decode_image(sample[key], size, name=f"{name}.{key}"),
                           "index": sample_index(f"{name}.{key}")}
                except CorruptImageError as e:
                    report_corrupt(e)
                    yield {"image": None}  # counted as skipped by collate_images
    return split


def shard_dataset(urls: str, size: int, shuffle_buffer: int = 0, epoch_size: int | None = None):
    ds = wds.WebDataset(urls, handler=wds.warn_and_continue, shardshuffle=100 if shuffle_buffer else False,
                        empty_check=False)
    ds = ds.compose(_images(size))
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer)
    if epoch_size:
        ds = ds.with_epoch(epoch_size).with_length(epoch_size)
    return ds


def shard_loader(urls: str, size: int, batch_size: int, shuffle_buffer: int, epoch_size: int | None,
                 **kwargs) -> DataLoader:
    kwargs.pop("persistent_workers", None)
    return DataLoader(shard_dataset(urls, size, shuffle_buffer, epoch_size), batch_size=batch_size,
                      collate_fn=kwargs.pop("collate_fn", collate_images), **kwargs)


# -- pair shards ----------------------------------------------------------------------------------------------------
def _decode_pairs(size: int):
    def decode(samples):
        for sample in samples:
            name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            try:
                if "0.jpg" not in sample or "1.jpg" not in sample:
                    raise CorruptImageError(name, f"not a pair sample: keys {sorted(sample)}, expected {PAIR_KEYS}")
                yield {"image": decode_image(sample["0.jpg"], size, name=name + ".0.jpg"),
                       "image2": decode_image(sample["1.jpg"], size, name=name + ".1.jpg"),
                       "index": sample_index(name)}
            except CorruptImageError as e:
                report_corrupt(e)
                yield {"image": None}  # counted as skipped by collate_images
    return decode


def pair_shards(urls: str, size: int, shuffle_buffer: int = 0):
    ds = wds.WebDataset(urls, handler=wds.warn_and_continue, shardshuffle=100 if shuffle_buffer else False,
                        empty_check=False).compose(_decode_pairs(size))
    return ds.shuffle(shuffle_buffer) if shuffle_buffer else ds


def read_records(urls: str) -> list[dict]:
    """The JSON records of pair shards, in order."""
    return [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
