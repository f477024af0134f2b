"""WebDataset tar shards of images, decoded like image files; bad samples skipped and counted.

Every image in a sample becomes one item: `jpg`/`png`/`webp` in plain image shards, and both views (`0.jpg`,
`1.jpg`) in MIMIC pair shards, which is how MIMIC trains MAE on its pairs (each view an independent image).
"""
from __future__ import annotations

import webdataset as wds
from torch.utils.data import DataLoader

from .folder import collate_images, report_corrupt
from .images import IMAGE_EXTENSIONS, CorruptImageError, decode_image

EXTENSIONS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


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
                    yield {"image": decode_image(sample[key], size, name=f"{name}.{key}"), "index": -1}
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
