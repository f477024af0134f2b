"""ImageNet-style class folders (`root/train/<class>/*.JPEG`, `root/val/<class>/*.JPEG`) for fine-tuning."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import DataLoader

from ..errors import ConfigError, NotFoundError
from .datamodule import BaseDataModule
from .folder import ImageFolderDataset, list_images


def class_folder(split: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names); class index = position in the sorted list of sub-folders of `split`."""
    if not split.is_dir():
        raise NotFoundError(f"expected a split folder {split} with one sub-folder per class "
                                f"(ImageNet layout: root/train/n01440764/*.JPEG, root/val/n01440764/*.JPEG)")
    found = sorted(p.name for p in split.iterdir() if p.is_dir())
    if not found:
        raise NotFoundError(f"{split} has no class sub-folders; found files "
                                f"{sorted(p.name for p in split.iterdir())[:5]} instead")
    classes = classes or found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ConfigError(f"{split} has classes that the training split lacks: {unknown[:5]}")
    files, labels = [], []
    for label, name in enumerate(classes):
        if (split / name).is_dir():
            for f in list_images(split / name):
                files.append(f)
                labels.append(label)
    return files, labels, classes


class ClassFolderDataModule(BaseDataModule):
    """Batches {"image": uint8 (B, 3, h, w), "label": int64 (B,), "index"}; augmentation runs on the device in the
    method. `size` is the decode size (the views crop from it). crop: "full" (training images keep their whole
    extent and aspect, shorter side at most `size`, so the fine-tuning and linear-probe RandomResizedCrop samples
    from the full photo as MAE's torchvision transform does; batches are zero-padded with each image's true size
    under "image_size") or "square" (the centre square, resized to `size`). Validation always decodes the centre
    square: resized to `size` (256) and centre-cropped by the method's evaluation view (224), it is MAE's eval
    transform."""

    def __init__(self, root: str, train_split: str = "train", val_split: str = "val", size: int = 256,
                 batch_size: int = 64, num_workers: int = 8, seed: int = 0, pin_memory: bool = True,
                 crop: Literal["full", "square"] = "full"):
        if crop not in ("full", "square"):
            raise ConfigError(f"crop must be 'full' or 'square', got {crop!r}")
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        root = Path(self.hparams.root)
        self.train = class_folder(root / self.hparams.train_split)
        self.classes = self.train[2]
        self.val = class_folder(root / self.hparams.val_split, self.classes)

    def train_dataloader(self) -> DataLoader:
        files, labels, _ = self.train
        return self.resumable_loader(ImageFolderDataset(files, self.hparams.size, labels,
                                                        full=self.hparams.crop == "full"))

    def val_dataloader(self) -> DataLoader:
        files, labels, _ = self.val
        return DataLoader(ImageFolderDataset(files, self.hparams.size, labels), batch_size=self.batch_size,
                          **self.loader_kwargs())
