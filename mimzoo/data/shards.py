"""WebDataset tar shards, read and written in one place: image shards (every image of a sample is an item) and
MIMIC pair shards (what `mimzoo curate` writes; read as pairs for cross-view completion, or as images for MAE, which
is how MIMIC trains MAE on its pairs). Bad samples are skipped and counted.

Pair record (one WebDataset sample per pair):
  `0.jpg`  view A, 224 x 224 RGB            `1.jpg`  view B
  `json`   {"source", "frame_a", "frame_b", "time_a", "time_b", "overlap" (0-1), "homography" (3 x 3, A -> B in
           224 x 224 pixels), "num_matches", "num_inliers"}
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from ..checkpoint import atomic_path
from ..errors import ConfigError
from .folder import collate_images, report_corrupt
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image, is_jpeg

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


# -- streams under DDP and loader workers ---------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size) of torch.distributed (which Lightning's DDP has set up before it asks for a loader)."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _by_rank(src, rank: int, world: int):
    return itertools.islice(src, rank, None, world)


def _by_worker(src, shuffle: bool):
    """This loader worker's shards, with `shuffle` in a new order every epoch (Python's `random`, which torch seeds
    per worker and epoch from the run's seed). Not WebDataset's shardshuffle: it draws the same order every epoch,
    so an epoch cut short (`train_epoch`) would leave out the same samples each time."""
    shards = list(wds.split_by_worker(src))
    if shuffle:
        random.shuffle(shards)
    yield from shards


def _stream(urls: str, decode, shuffle_buffer: int, epoch: tuple[int, int] | None):
    """Whole shards go to processes (shard i to rank i % world), then to loader workers (as wds.split_by_worker).
    The rank is taken here and passed on, not read by wds.split_by_node inside the workers: it is the rank
    `train_epoch` counted with, and workers started by spawn or forkserver have no process group (split_by_node
    would see rank 0 of 1 in every process)."""
    rank, world = dist_info()
    ds = wds.WebDataset(urls, handler=wds.warn_and_continue, shardshuffle=False, empty_check=False,
                        nodesplitter=functools.partial(_by_rank, rank=rank, world=world),
                        workersplitter=functools.partial(_by_worker, shuffle=bool(shuffle_buffer))).compose(decode)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer)
    if epoch:  # each worker stops after its share, and the loader's length is the process's share
        per_worker, workers = epoch
        return SizedStream(ds.with_epoch(per_worker), per_worker * workers)
    return ds


class SizedStream(IterableDataset):
    """A stream with a length. Not wds's `with_length`: the class it makes at run time cannot be pickled, and loader
    workers started by spawn or forkserver (torch.multiprocessing.spawn, ddp_spawn, Python 3.14's default) get
    the dataset pickled; so are the decoders module functions, not closures."""

    def __init__(self, stream, length: int):
        self.stream, self.length = stream, length

    def __iter__(self):
        return iter(self.stream)

    def __len__(self) -> int:
        return self.length


def train_epoch(urls: str, batch_size: int, num_workers: int, epoch_size: int | None = None,
                images: bool = True) -> tuple[int, int] | None:
    """(items per loader worker, workers) of a training epoch over shards. Every worker of every process yields the
    same whole number of full batches: DDP needs the same number of steps on every process (a process with one
    more would wait forever in its gradient all-reduce), and `len(loader)` is then exact, which Lightning's step
    count (`estimated_stepping_batches`) and the lr schedule use. The share is the fewest items any worker's
    shards hold (total // (processes x workers) for equal shards), rounded down to full batches; the rest is left
    out of the epoch (with a shuffle buffer, different items each epoch). `epoch_size` (items per epoch, all
    processes together) replaces the count; a larger one repeats shards within the epoch. None: shards that are
    not local files in a single process, one pass of unknown length."""
    world, workers = dist_info()[1], max(1, num_workers)
    shards = expand_urls(urls)
    if len(shards) < world * workers:
        # An error, as OpenCLIP's (its shards must be >= workers x world size unless resampled): a worker without
        # a shard would yield nothing, and resampling (drawing shards with replacement) sees no sample exactly once.
        raise ConfigError(f"{urls} has {len(shards)} shard(s) for {world} process(es) x {workers} loader worker(s): "
                          f"each reads whole shards, so {world * workers - len(shards)} would read none; write at "
                          f"least {world * workers} shards or lower --data.init_args.num_workers")
    if epoch_size:
        per_worker = epoch_size // (world * workers)
    elif all(os.path.isfile(s) for s in shards):
        counts = [_shard_items(s, images, *_stamp(s)) for s in shards]
        per_worker = min(sum(counts[r::world][w::workers]) for r in range(world) for w in range(workers))
    elif world > 1:
        raise ConfigError(f"{urls}: shards that are not local files have no known length, which DDP needs (equal "
                          f"steps on every process); set --data.init_args.epoch_size (items per epoch)")
    else:
        return None
    if per_worker < batch_size:
        raise ConfigError(f"{urls}: {per_worker} item(s) per loader worker ({world} process(es) x {workers} "
                          f"worker(s)), fewer than batch_size={batch_size}; lower the batch size or the workers")
    return per_worker - per_worker % batch_size, workers


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


@functools.cache
def _shard_items(path: str, images: bool, mtime_ns: int, size: int) -> int:
    """The items a local shard yields (its samples or, with `images`, their images, one for a sample without
    any), counted once per version of the file. `mimzoo curate` records each shard's pairs in
    ../sources/<id>.json, written after the shard (a shard newer than its record was rewritten since): read that;
    else the tar's headers (the data is skipped)."""
    shard = Path(path)
    record = shard.parent.parent / "sources" / f"{shard.stem}.json"
    if shard.parent.name == "shards" and record.is_file() and record.stat().st_mtime_ns >= mtime_ns:
        r = json.loads(record.read_text())
        if r.get("shard") == f"shards/{shard.name}":
            return len(r["pairs"]) * (2 if images else 1)
    with tarfile.open(path) as tar:
        names = [n for n in (base_plus_ext(m.name) for m in tar if m.isreg()) if n[0] is not None]
    samples = [list(g) for _, g in itertools.groupby(names, key=lambda n: n[0])]  # as WebDataset groups them
    if not images:
        return len(samples)
    return sum(max(1, sum(ext.rsplit(".", 1)[-1].lower() in EXTENSIONS for _, ext in s)) for s in samples)


def shard_loader(urls: str, size: int, batch_size: int, shuffle_buffer: int = 0, epoch_size: int | None = None,
                 pairs: bool = False, train: bool = False, full: bool = False, device_decode: bool = False,
                 **kwargs) -> DataLoader:
    """Image (or, with `pairs`, pair) batches from shards. train: an epoch of `train_epoch`; else one pass, every
    shard read by one process and worker. full: images keep their whole extent (`decode_image(full=True)`)."""
    kwargs.pop("persistent_workers", None)
    epoch = train_epoch(urls, batch_size, kwargs.get("num_workers", 0), epoch_size, not pairs) if train else None
    ds = (pair_shards(urls, size, shuffle_buffer, epoch) if pairs else
          shard_dataset(urls, size, shuffle_buffer, epoch, full=full, device_decode=device_decode))
    return DataLoader(ds, batch_size=batch_size, collate_fn=kwargs.pop("collate_fn", collate_images), **kwargs)


# -- image shards ---------------------------------------------------------------------------------------------------
def _images(samples, size: int, full: bool = False, device_decode: bool = False):
    for sample in samples:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        keys = sorted(k for k in sample if k.rsplit(".", 1)[-1].lower() in EXTENSIONS)
        if not keys:
            report_corrupt(CorruptImageError(name, f"no image in the sample; keys are {sorted(sample)}"))
            yield {"image": None}
        for key in keys:
            if device_decode and is_jpeg(sample[key]):  # decoded on the device (`device_decode`)
                yield {"encoded": sample[key], "encoded_name": f"{name}.{key}", "index": sample_index(f"{name}.{key}"),
                       "decode_size": size, "decode_full": full}
                continue
            try:
                yield {"image": decode_image(sample[key], size, name=f"{name}.{key}", full=full),
                       "index": sample_index(f"{name}.{key}")}
            except CorruptImageError as e:
                report_corrupt(e)
                yield {"image": None}  # counted as skipped by collate_images


def shard_dataset(urls: str, size: int, shuffle_buffer: int = 0, epoch: tuple[int, int] | None = None,
                  full: bool = False, device_decode: bool = False):
    return _stream(urls, functools.partial(_images, size=size, full=full, device_decode=device_decode),
                   shuffle_buffer, epoch)


# -- pair shards ----------------------------------------------------------------------------------------------------
def _decode_pairs(samples, size: int):
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


def pair_shards(urls: str, size: int, shuffle_buffer: int = 0, epoch: tuple[int, int] | None = None):
    return _stream(urls, functools.partial(_decode_pairs, size=size), shuffle_buffer, epoch)


def read_records(urls: str) -> list[dict]:
    """The JSON records of pair shards, in order."""
    return [json.loads(s["json"]) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
