"""Lightning plumbing that keeps a run's files whole: checkpoints written beside their target and renamed (never
copied across filesystems), a resume that falls back to the newest checkpoint that loads, a last checkpoint that is
the final model, and a metrics log that a resumed run continues instead of replacing."""
from __future__ import annotations

import csv
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from .checkpoint import atomic_path, remove_leftovers
from .errors import UNWRITABLE, Error, NotFoundError

log = logging.getLogger(__name__)
UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError)  # what a cut file raises


class CheckpointWriteError(Error, OSError):
    """A checkpoint could not be written (full disk, quota, read-only folder); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file in the checkpoint's own folder, flushed, then renamed onto it.

    Lightning's default goes through fsspec's local transaction, which writes under $TMPDIR and then moves the file:
    across filesystems (a run folder on shared storage) that move is a copy, so a kill or a full disk leaves a
    truncated checkpoint under the final name and the temporary file behind. Here a failed save leaves the previous
    file untouched and no temporary file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        remove_leftovers(Path(path).parent, "*.ckpt")  # of a save killed with -9 (saves are one at a time)
        writes = _WriteErrors()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, writes.wrap(f))
        except (OSError, RuntimeError) as err:
            e = writes.error or err  # torch.save turns the OSError of a full disk into a RuntimeError
            if getattr(e, "errno", None) not in UNWRITABLE:
                raise
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {e.strerror}; the previous file of that name "
                                       f"is kept whole (free space or point --trainer.default_root_dir elsewhere, "
                                       f"then resume with --ckpt_path last)") from e

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at `path`; if that file is unreadable (cut short by a kill or a full disk before mimzoo
        wrote atomically, or damaged since), the newest other checkpoint in its folder that loads, with a warning
        naming both. A missing file is an error naming the folder's checkpoints."""
        path = Path(path)
        if not path.is_file():
            found = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
            raise NotFoundError(f"checkpoint {path} does not exist (in its folder: {', '.join(found) or 'none'}); "
                                f"pass one of those as --ckpt_path, or leave it out to start from scratch")
        try:
            return super().load_checkpoint(path, map_location, weights_only)
        except UNREADABLE as e:
            why = f"{type(e).__name__}: {str(e).split('. ')[0]}".rstrip(": ")
        others = sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: -p.stat().st_mtime_ns)
        for other in others:
            try:
                checkpoint = super().load_checkpoint(other, map_location, weights_only)
            except UNREADABLE:
                continue
            log.warning(f"checkpoint {path} is unreadable ({why}); resuming from {other.name} instead (step "
                        f"{checkpoint.get('global_step', '?')}), the newest checkpoint in {path.parent} that loads")
            return checkpoint
        raise NotFoundError(f"checkpoint {path} is unreadable ({why}) and no other checkpoint in {path.parent} loads; "
                            f"leave out --ckpt_path to start from scratch")


class _WriteErrors:
    """A file's write, remembering the OSError it raised (torch.save reports only a RuntimeError of its own)."""

    def __init__(self):
        self.error: OSError | None = None

    def wrap(self, f):
        self.f = f
        return self

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is always the final model: also saved when training ends, if the last step
    was not saved yet (with `every_n_train_steps=50`, a 480-step run would otherwise keep step 450).

    Every checkpoint also records how many rows the run's `mimzoo.training.CSVLogger` holds, so a run resumed from it
    keeps those rows and drops the ones logged after it (they are logged again)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        for lg in trainer.loggers:
            if isinstance(lg, CSVLogger):
                # the rows this checkpoint counts reach the disk before it does: a kill between the two leaves
                # more rows than the (older) checkpoint counts, which a resume drops and logs again; the other way
                # round (rows counted but still in memory) they would be lost
                lg.save()
        rows = {i: lg.rows() for i, lg in enumerate(trainer.loggers) if isinstance(lg, CSVLogger)}
        if rows:
            checkpoint["mimzoo_metrics_rows"] = rows

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        step = checkpoint.get("global_step", 0)
        for i, lg in enumerate(trainer.loggers):
            if isinstance(lg, CSVLogger):
                lg.resume(checkpoint.get("mimzoo_metrics_rows", {}).get(i), step)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        path = Path(self.dirpath or "") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self._last_global_step_saved != trainer.global_step or not os.path.isfile(path):
            trainer.save_checkpoint(str(path), self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
            self.last_model_path = str(path)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a resumed run continues `metrics.csv` (Lightning's deletes the file when
    the logger starts, so a resumed run keeps only the rows logged after the resume).

    A resumed run keeps the rows its checkpoint counted (see LastCheckpoint) or, from a checkpoint that did not
    count them, the rows before its step. A fresh run into a folder with a metrics file replaces it, as Lightning's
    does, at its first save: a run that fails before logging anything leaves the old file as it was."""

    @property
    def experiment(self) -> ContinuedWriter:
        if self._experiment is None:
            os.makedirs(self._root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(self.log_dir)
        return self._experiment

    def rows(self) -> int:
        return self.experiment.rows()

    def resume(self, rows: int | None, step: int) -> None:
        self.experiment.resume(rows, step)


class ContinuedWriter(ExperimentWriter):
    """Lightning's experiment writer that leaves an existing metrics file alone until its first save, which keeps
    the earlier rows a resumed run holds and writes them with the new ones (atomically)."""

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        self._saved = 0
        self._keep: list[dict] | None = []  # None once the file is this run's own
        self._previous = self._read() if os.path.isfile(self.metrics_file_path) else []

    def _read(self) -> list[dict]:
        with open(self.metrics_file_path, newline="") as f:
            return list(csv.DictReader(f))

    def rows(self) -> int:
        """Rows of this run so far, flushed or not."""
        return (len(self._keep) if self._keep is not None else 0) + self._saved + len(self.metrics)

    def resume(self, rows: int | None, step: int) -> None:
        """Keep the rows logged before the checkpoint: the ones it counted (a validation row of its own step
        included) and the ones of earlier steps (Lightning logs a step's training row after the checkpoint of
        that step is saved). A checkpoint that counted nothing keeps the earlier steps."""
        keep = 0
        for k, row in enumerate(self._previous):
            earlier = row.get("step", "").isdigit() and int(row["step"]) < step
            if not (earlier or k < (rows or 0)):
                break
            keep = k + 1
        self._keep = self._previous[:keep]

    def save(self) -> None:
        if not self.metrics:
            return
        if self._keep is None:
            self._saved += len(self.metrics)
            return super().save()
        kept, self._keep = self._keep, None
        new = self.metrics
        keys = sorted(set().union(*kept, *new) - {""})
        self.metrics_keys = keys
        with atomic_path(self.metrics_file_path) as tmp:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept + new)
        self._saved = len(kept) + len(new)
        self.metrics = []
