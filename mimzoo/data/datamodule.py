"""`ImageDataModule`: the built-in sample set, an image folder or WebDataset shards, as uint8 batches.

Augmentation happens on the device in the method (`on_after_batch_transfer`), so workers only decode and resize.
The training loader is resumable: Lightning stores its position in checkpoints and a run resumed mid-epoch sees
exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError
from .device_decode import decode_batch
from .folder import ImageFolderDataset, collate_images, list_images
from .sample import sample_folder
from .shards import is_shards, shard_loader


class EpochShuffle(Sampler[int]):
    """A permutation per epoch drawn from (seed, epoch), split across ranks, that can start part-way.
    Lightning calls `set_epoch` at every epoch start (and restores the epoch on resume)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        mine = torch.randperm(self.size, generator=g)[: self.per_rank * self.world][self.rank::self.world].tolist()
        start, self.start = self.start, 0
        return iter(mine[start:])


class ResumableLoader(DataLoader):
    """A DataLoader with Lightning's `state_dict`/`load_state_dict` protocol: it counts the batches the training
    loop has taken this epoch, and after a reload starts the same permutation right after them."""

    def __init__(self, dataset, sampler: EpochShuffle, batch_size: int, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.taken = 0

    def __iter__(self):
        self.taken = self.sampler.start // self.batch_size
        for batch in super().__iter__():
            self.taken += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch = state["epoch"]
        self.sampler.start = state["taken"] * self.batch_size


class BaseDataModule(L.LightningDataModule):
    """What the datamodules share: resumable shuffled training loaders, the count of skipped (corrupt) images,
    and loader settings. Subclasses set `batch_size` and hparams num_workers, pin_memory, seed."""

    skipped_images = 0
    _train_loader = None
    _pending_loader_state = None

    def loader_kwargs(self) -> dict:
        hp = self.hparams
        return {"num_workers": hp.num_workers, "collate_fn": collate_images,
                "pin_memory": hp.pin_memory and torch.cuda.is_available(), "persistent_workers": hp.num_workers > 0}

    def resumable_loader(self, dataset) -> ResumableLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = EpochShuffle(len(dataset), self.hparams.seed, rank, world)
        if len(dataset) // world < self.batch_size:  # drop_last would leave no batch: training would do nothing
            raise ConfigError(f"the training set has {len(dataset)} images ({len(dataset) // world} per process), "
                              f"fewer than batch_size={self.batch_size}; lower --data.init_args.batch_size or add "
                              f"images (or repeats)")
        self._train_loader = ResumableLoader(dataset, sampler, self.batch_size, drop_last=True,
                                             **self.loader_kwargs())
        if self._pending_loader_state:
            self._train_loader.load_state_dict(self._pending_loader_state)
            self._pending_loader_state = None
        return self._train_loader

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "encoded" in batch:  # decode="device": the JPEGs are decoded where the batch is going
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            batch = decode_batch(batch, device)
        skipped = batch.pop("skipped", None)
        if skipped is not None:
            self.skipped_images += int(skipped)  # a CPU tensor: no device sync
        return batch

    def teardown(self, stage: str) -> None:
        if self.skipped_images:
            rank_zero_warn(f"skipped {self.skipped_images} corrupt or unreadable images (warned once per file)")

    # The loader position also travels with the datamodule state: Lightning restores it before any loader exists,
    # whereas its own loader-state restore is skipped once `estimated_stepping_batches` (used for the lr schedule)
    # has built the loader before the checkpoint's loop state is read.
    def state_dict(self) -> dict:
        loader = self._train_loader
        return {"skipped_images": self.skipped_images, "train_loader": loader.state_dict() if loader else None}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_images = state.get("skipped_images", 0)
        self._pending_loader_state = state.get("train_loader")


class ImageDataModule(BaseDataModule):
    """data: "sample" (the scikit-image photos), an image folder, or WebDataset shards ("shards-{000..099}.tar").
    val_data: a folder or shards; default: "sample" holds out every 4th photo, a folder every `val_every`-th file.
    size: the size images are decoded to (the views crop from it). crop: "full" (training images keep their whole
    extent and aspect, shorter side at most `size`, so RandomResizedCrop samples from the full photo as MAE,
    SiameseIM and MIM-Refiner do; batches are zero-padded, with each image's true size under "image_size") or
    "square" (the centre square, resized to `size`: less to decode and move, crops only inside it). Validation
    always decodes the centre square (MAE's eval transform). decode: "worker" (loader workers decode, the fastest
    CPU decoder) or "device" (workers only read the files; JPEGs are decoded in batches on the training device,
    nvjpeg on a GPU, `mimzoo.data.device_decode`; image folders and image shards). repeats: an epoch passes over the
    training set this many times (the sample set is small). Shards: every process and loader worker reads its own
    whole shards, and an epoch is the same number of full batches on each (`shards.train_epoch`); epoch_size:
    images per epoch, all processes together (default: one pass, counted)."""

    def __init__(self, data: str = "sample", val_data: str | None = None, size: int = 256, batch_size: int = 64,
                 num_workers: int = 2, repeats: int = 1, val_every: int = 50, seed: int = 0,
                 pin_memory: bool = True, shuffle_buffer: int = 2000, epoch_size: int | None = None,
                 crop: Literal["full", "square"] = "full", decode: Literal["worker", "device"] = "worker"):
        if crop not in ("full", "square"):
            raise ConfigError(f"crop must be 'full' or 'square', got {crop!r}")
        if decode not in ("worker", "device"):
            raise ConfigError(f"decode must be 'worker' or 'device', got {decode!r}")
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if is_shards(hp.data):
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

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        if is_shards(hp.data):
            return shard_loader(hp.data, hp.size, hp.batch_size, hp.shuffle_buffer, hp.epoch_size, train=True,
                                full=hp.crop == "full", device_decode=hp.decode == "device", **self.loader_kwargs())
        return self.resumable_loader(ImageFolderDataset(self.train_files, hp.size, repeats=hp.repeats,
                                                        full=hp.crop == "full", device_decode=hp.decode == "device"))

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        if is_shards(hp.data):
            if hp.val_data is None:
                return []
            return shard_loader(hp.val_data, hp.size, hp.batch_size, device_decode=hp.decode == "device",
                                **self.loader_kwargs())
        return DataLoader(ImageFolderDataset(self.val_files, hp.size, device_decode=hp.decode == "device"),
                          batch_size=hp.batch_size, shuffle=False,
                          **self.loader_kwargs())
