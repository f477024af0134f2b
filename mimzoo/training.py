"""Lightning plumbing that keeps a run's files whole: checkpoints written beside their target and renamed (never
copied across filesystems), and a last checkpoint that is the final model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from .checkpoint import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file in the checkpoint's own folder, flushed, then renamed onto it.

    Lightning's default goes through fsspec's local transaction, which writes under $TMPDIR and then moves the file:
    across filesystems (a run folder on shared storage) that move is a copy, so a kill or a full disk leaves a
    truncated checkpoint under the final name and the temporary file behind. Here a failed save leaves the previous
    file untouched and no temporary file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is always the final model: also saved when training ends, if the last step
    was not saved yet (with `every_n_train_steps=50`, a 480-step run would otherwise keep step 450)."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        path = Path(self.dirpath or "") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self._last_global_step_saved != trainer.global_step or not os.path.isfile(path):
            trainer.save_checkpoint(str(path), self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
            self.last_model_path = str(path)
