"""WebDataset tar shards of images (keys jpg/jpeg/png/webp), decoded like image files; bad samples skipped."""
from __future__ import annotations

import webdataset as wds
from torch.utils.data import DataLoader

from .folder import collate_images, report_corrupt
from .images import CorruptImageError, decode_image

KEYS = ("jpg", "jpeg", "png", "webp")


def _decode(size: int):
    def decode(sample: dict) -> dict:
        key = next((k for k in KEYS if k in sample), None)
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        if key is None:
            report_corrupt(CorruptImageError(name, f"no image under {KEYS}; keys are {sorted(sample)}"))
            return {"image": None}
        try:
            return {"image": decode_image(sample[key], size, name=name), "index": -1}
        except CorruptImageError as e:
            report_corrupt(e)
            return {"image": None}  # counted as skipped by collate_images
    return decode


def shard_dataset(urls: str, size: int, shuffle_buffer: int = 0, epoch_size: int | None = None):
    ds = wds.WebDataset(urls, handler=wds.warn_and_continue, shardshuffle=100 if shuffle_buffer else False,
                        empty_check=False)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer)
    ds = ds.map(_decode(size), handler=wds.warn_and_continue)
    if epoch_size:
        ds = ds.with_epoch(epoch_size).with_length(epoch_size)
    return ds


def shard_loader(urls: str, size: int, batch_size: int, shuffle_buffer: int, epoch_size: int | None,
                 **kwargs) -> DataLoader:
    kwargs.pop("persistent_workers", None)
    return DataLoader(shard_dataset(urls, size, shuffle_buffer, epoch_size), batch_size=batch_size, **kwargs)
