"""`DenseDataModule`: any dataset of the table `DATASETS` (adding a dataset = one module + one row)."""
from __future__ import annotations

from torch.utils.data import DataLoader

from ...errors import ConfigError
from ..datamodule import BaseDataModule
from . import ade20k, nyuv2, stereo_sample, taskonomy
from .common import RESIZE_MODES, DenseCollate, DenseSource

DATASETS: dict[str, DenseSource] = {
    "nyuv2": nyuv2.SOURCE,
    "ade20k": ade20k.SOURCE,
    "taskonomy": taskonomy.SOURCE,
    "stereo_sample": stereo_sample.SOURCE,
}


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
        if dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
        source = DATASETS[dataset]
        task = task or source.tasks[0]
        if task not in source.tasks:
            raise ConfigError(f"{dataset} supports the tasks {list(source.tasks)}, got {task!r}")
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        if root is None and source.needs_root:
            raise ConfigError(f"{dataset} needs root: the folder holding your local copy")
        # `task` stays out: LightningCLI records the given (possibly empty) value, which would clash with the
        # method's resolved `task` when Lightning merges both into the logged hparams
        self.save_hyperparameters(ignore=["task"])
        self.batch_size, self.task = batch_size, task
        self.num_classes = source.num_classes

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.val_set = DATASETS[self.hparams.dataset].splits(self.hparams, self.task)

    def loader_kwargs(self) -> dict:
        return {**super().loader_kwargs(), "collate_fn": DenseCollate(self.task, self.hparams.size)}

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.train_set)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, **self.loader_kwargs())
