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


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return str(path)


USER_MISTAKES = {  # case: (extra arguments, given tmp_path; what the one line must say)
    "batch larger than the data": (lambda t: ["--data.init_args.batch_size", "64"], "fewer than batch_size=64"),
    "missing data folder": (lambda t: ["--data.init_args.data", "/nonexistent/images"], "does not exist"),
    "empty data folder": (lambda t: ["--data.init_args.data", str(t)], "no images in "),
    "misspelt option in a config": (lambda t: ["-c", _config(t, "model:\n  init_args:\n    mask_ration: 0.5\n")],
                                    "Option 'mask_ration' is not accepted (did you mean 'mask_ratio'?)"),
    "wrong value type": (lambda t: ["--model.init_args.mask_ratio", "abc"], "Expected a <class 'float'>"),
    "YAML syntax error": (lambda t: ["-c", _config(t, "trainer:\n  max_steps: 1\n   devices: 1\n")],
                          "extra.yaml is not valid YAML (line 3, column 11)"),
    "missing config file": (lambda t: ["-c", str(t / "nope.yaml")], "nope.yaml does not exist"),
}


@pytest.mark.parametrize("case", sorted(USER_MISTAKES))
def test_a_users_mistake_is_one_line(tmp_path, capsys, case):
    extra, message = USER_MISTAKES[case]
    data = tmp_path / "data"
    data.mkdir()
    assert _fit(tmp_path, *extra(data)) == 2, case
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mimzoo fit: error: ") and message in err[-1], err[-3:]
    assert not any("Traceback" in line or line.startswith("usage:") for line in err), err


def test_a_logger_whose_package_is_missing_is_one_line_with_the_install_command(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    assert _fit(tmp_path, "--trainer.logger", "lightning.pytorch.loggers.WandbLogger") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mimzoo fit: error: this needs the package 'wandb', which is not installed: pip install wandb"]


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    import sys

    from mimzoo.cli import missing_dependency_line

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does where Ray is not installed
    with pytest.raises(ModuleNotFoundError) as e:
        import ray  # noqa: F401
    assert missing_dependency_line(e.value).endswith("pip install 'mimzoo[ray]'")
    assert missing_dependency_line(ModuleNotFoundError("No module named 'sklearn'", name="sklearn")).endswith(
        "pip install scikit-learn")
    assert missing_dependency_line(ModuleNotFoundError("x", name="mimzoo.nope")) is None  # our bug: a traceback


@pytest.mark.slow
def test_a_read_only_cache_is_one_line(tmp_path, small_filesystem, monkeypatch, capsys):
    import subprocess

    cache = small_filesystem(1)
    subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
    monkeypatch.setenv("MIMZOO_CACHE", str(cache))  # where the sample photos are written on first use
    assert _fit(tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"mimzoo fit: error: cannot write {cache}") and "Read-only file system" in err[-1], err
    assert "MIMZOO_CACHE" in err[-1] and not any("Traceback" in line for line in err)


def test_a_missing_or_unreadable_checkpoint_is_one_clear_error(tmp_path):
    from mimzoo.errors import NotFoundError

    io = AtomicCheckpointIO()
    with pytest.raises(NotFoundError, match=r"does not exist \(in its folder: none\)"):
        io.load_checkpoint(tmp_path / "last.ckpt")
    io.save_checkpoint({"global_step": 3}, tmp_path / "last.ckpt")
    (tmp_path / "last.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:100])  # cut short
    with pytest.raises(NotFoundError, match="is unreadable .* and no other checkpoint .* loads"):
        io.load_checkpoint(tmp_path / "last.ckpt")
    io.save_checkpoint({"global_step": 2}, tmp_path / "step=2.ckpt")
    assert io.load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 2


TINY = ["--model.init_args.backbone_kwargs", "{depth: 1, img_size: 64}", "--model.init_args.decoder_depth", "1",
        "--data.init_args.batch_size", "4", "--trainer.log_every_n_steps", "1"]


def _logged_fit(run, *extra):
    return ["fit", "-c", QUICK, "--trainer.enable_progress_bar=false", "--trainer.default_root_dir", str(run),
            "--trainer.logger.init_args.save_dir", str(run), "--trainer.callbacks.init_args.dirpath",
            str(run / "checkpoints"), "--trainer.callbacks.init_args.every_n_train_steps", "3",
            "--data.init_args.repeats", "1", "--data.init_args.num_workers", "0", *TINY, *extra]


def _steps(run) -> list[int]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_a_resume_falls_back_to_the_newest_checkpoint_that_loads_and_keeps_the_metrics(tmp_path, caplog):
    run = tmp_path / "run"
    assert cli(_logged_fit(run, "--trainer.max_steps", "7")) == 0
    assert _steps(run) == list(range(7))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # what a kill during a copy left
    assert cli(_logged_fit(run, "--trainer.max_steps", "9", "--ckpt_path", "last")) == 0
    assert "resuming from epoch=1-step=6.ckpt instead (step 6)" in caplog.text
    # the rows of steps 0-5 come from the first run, 6-8 from the resumed one; none is lost or logged twice
    assert _steps(run) == list(range(9))
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] == 9


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of the given size in MB: another filesystem than $TMPDIR, and one that fills up."""
    import subprocess

    mounted = []

    def mount(mb: int) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)],
                                               capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, small_filesystem, capsys):
    # one 9 MB checkpoint fits in 14 MB, the next one does not; the run stops with one line and loses nothing
    run = small_filesystem(14) / "run"
    assert cli(_logged_fit(run, "--trainer.max_steps", "7")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mimzoo fit: error: cannot write checkpoint") and "No space left" in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["global_step"] == 3
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_kill_9_while_saving_across_filesystems_leaves_checkpoints_that_load(tmp_path, small_filesystem):
    import random
    import signal
    import subprocess
    import sys
    import time

    run, temp = small_filesystem(200) / "run", tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    args = _logged_fit(run, "--trainer.max_steps", "400", "--trainer.callbacks.init_args.every_n_train_steps", "1")
    rng, last = random.Random(0), run / "checkpoints" / "last.ckpt"
    for kill in range(3):
        cmd = [sys.executable, "-m", "mimzoo.cli", *args, *(["--ckpt_path", "last"] if kill else [])]
        before = last.stat().st_mtime_ns if last.is_file() else None
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and (
                not last.is_file() or last.stat().st_mtime_ns == before):  # this run has saved once
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it was killed"
        time.sleep(rng.uniform(0.2, 1.5))  # a save is in flight most of the time: two files per step
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps = [torch.load(c, weights_only=False, map_location="cpu")["global_step"]  # whole, or this raises
                 for c in (run / "checkpoints").glob("*.ckpt")]
        assert not list(temp.iterdir()), "temporary files left in $TMPDIR"
    assert cli(_logged_fit(run, "--trainer.max_steps", str(max(steps) + 2), "--ckpt_path", "last")) == 0
    assert _steps(run) == list(range(max(steps) + 2)), "rows lost or logged twice across the kills"
    # checkpoint leftovers of the killed saves are removed by the next save (a picture's may remain: see docs)
    assert not list((run / "checkpoints").glob("*.tmp"))
