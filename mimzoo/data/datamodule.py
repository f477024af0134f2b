"""`ImageDataModule`: the built-in sample set, an image folder or WebDataset shards, as uint8 batches.

Augmentation happens on the device in the method (`on_after_batch_transfer`), so workers only decode and resize.
The training loader is resumable: Lightning stores its position in checkpoints and a run resumed mid-epoch sees
exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from .folder import ImageFolderDataset, collate_images, list_images
from .sample import sample_folder


class EpochShuffle(Sampler[int]):
    """A permutation per epoch drawn from (seed, epoch), that can start part-way: the resumable sampler."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, drop_last: bool = True):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world if drop_last else -(-size // world)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        order = (order * 2)[: self.per_rank * self.world]  # pad by wrapping, like DistributedSampler
        mine = order[self.rank::self.world]
        start, self.start = self.start, 0
        return iter(mine[start:])


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's `state_dict`/`load_state_dict` protocol: it remembers the epoch and how many
    batches the training loop took, and on reload starts the same permutation at the next batch."""

    def __init__(self, dataset, sampler: EpochShuffle, batch_size: int, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.taken = 0

    def __iter__(self):
        self.taken = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self.taken += 1
            yield batch
        self.sampler.epoch += 1
        self.taken = 0

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = state["epoch"]
        self.sampler.start = state["taken"] * self.batch_size


class ImageDataModule(L.LightningDataModule):
    """data: "sample" (the scikit-image photos), an image folder, or WebDataset shards ("shards-{000..099}.tar").
    val_data: a folder or shards; default: "sample" holds out every 4th photo, a folder every `val_every`-th file.
    size: the square size images are decoded to (the views crop from it). repeats: an epoch passes over the
    training set this many times (the sample set is small)."""

    def __init__(self, data: str = "sample", val_data: str | None = None, size: int = 256, batch_size: int = 64,
                 num_workers: int = 2, repeats: int = 1, val_every: int = 50, seed: int = 0,
                 pin_memory: bool = True, shuffle_buffer: int = 2000, epoch_size: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.skipped_images = 0

    @staticmethod
    def _is_shards(data: str) -> bool:
        return data.endswith(".tar") or ".tar}" in data or "::" in data

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self._is_shards(hp.data):
            return
        if hp.data == "sample":
            files, every = list_images(sample_folder()), 4
        else:
            files, every = list_images(hp.data), hp.val_every
        if hp.val_data is not None:
            self.train_files, self.val_files = files, list_images(hp.val_data)
        else:
            self.val_files = files[every - 1::every]
            held = set(self.val_files)
            self.train_files = [f for f in files if f not in held]

    def _loader_kwargs(self) -> dict:
        hp = self.hparams
        return {"num_workers": hp.num_workers, "collate_fn": collate_images,
                "pin_memory": hp.pin_memory and torch.cuda.is_available(),
                "persistent_workers": hp.num_workers > 0}

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if self._is_shards(hp.data):
            from .webdataset import shard_loader

            return shard_loader(hp.data, hp.size, hp.batch_size, hp.shuffle_buffer, hp.epoch_size,
                                **self._loader_kwargs())
        dataset = ImageFolderDataset(self.train_files * hp.repeats, hp.size)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffle(len(dataset), hp.seed, rank, world)
        return ResumableLoader(dataset, sampler, hp.batch_size, drop_last=True, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        if self._is_shards(hp.data):
            if hp.val_data is None:
                return []
            from .webdataset import shard_loader

            return shard_loader(hp.val_data, hp.size, hp.batch_size, 0, None, **self._loader_kwargs())
        return DataLoader(ImageFolderDataset(self.val_files, hp.size), batch_size=hp.batch_size, shuffle=False,
                          **self._loader_kwargs())

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        skipped = batch.pop("skipped", None)
        if skipped is not None:
            self.skipped_images += int(skipped)  # a CPU tensor: no device sync
        return batch

    def teardown(self, stage: str) -> None:
        if self.skipped_images:
            rank_zero_warn(f"skipped {self.skipped_images} corrupt or unreadable images (warned once per file)")

    def state_dict(self) -> dict:
        return {"skipped_images": self.skipped_images}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_images = state.get("skipped_images", 0)
