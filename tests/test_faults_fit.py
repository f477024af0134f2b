"""Fault matrix, `mimzoo fit`: checkpoints written beside their target (a failed save keeps the previous file and
leaves no temporary), `last.ckpt` is the final model, and a user's mistake is one line, never a traceback."""
import os
from pathlib import Path

import pytest
import torch

from mimzoo.cli import main as cli
from mimzoo.training import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "recipes/quickstart/mae_tiny.yaml")


class Unpicklable:
    def __reduce__(self):
        raise OSError(28, "No space left on device")  # what a full disk does in the middle of a save


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    temp = tmp_path / "elsewhere"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # the run folder is not where temporary files go
    io, path = AtomicCheckpointIO(), tmp_path / "run" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(3.0)}, "global_step": 1}, path)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "payload": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"] and not list(temp.iterdir())
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fit(tmp_path, *extra):
    return cli(["fit", "-c", QUICK, "--trainer.enable_progress_bar=false", "--trainer.max_steps", "7",
                "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false",
                "--trainer.callbacks.init_args.dirpath", str(tmp_path / "run" / "checkpoints"),
                "--data.init_args.repeats", "1", "--data.init_args.num_workers", "0", *extra])


@pytest.mark.slow
def test_last_ckpt_is_the_final_model(tmp_path):
    # every_n_train_steps=50 in the recipe: without the final save a 7-step run would have no last.ckpt at all
    assert _fit(tmp_path, "--data.init_args.batch_size", "4") == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 7


@pytest.mark.parametrize("case, extra, message", [
    ("batch larger than the data", ["--data.init_args.batch_size", "64"], "fewer than batch_size=64"),
    ("missing data folder", ["--data.init_args.data", "/nonexistent/images"], "does not exist"),
])
def test_a_users_mistake_is_one_line(tmp_path, capsys, case, extra, message):
    assert _fit(tmp_path, *extra) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mimzoo fit: error: ") and message in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)
