"""Fault matrix, curation: the overlap is MIMIC's estimator (fresh pixels per patch and direction, not one shared
set), and the loop bounds and edge cases of MIMIC's per-source scripts."""
from collections import Counter

import cv2
import numpy as np
import pytest
from test_curate import upstream_style_overlap

from mimzoo.curate.frames import folder_pairs, resize, video_frames, video_pairs
from mimzoo.curate.matching import GRID, PATCH, overlap, patch_map, smaller
from mimzoo.curate.pipeline import Options, accepted_with_retry

PAN = lambda dx: np.array([[1, 0, dx], [0, 1, 0], [0, 0, 1.0]])  # noqa: E731
TURN = np.array([[0.97, -0.12, 14.0], [0.12, 0.97, -9.0], [0, 0, 1]])


def shared_offsets_overlap(h: np.ndarray, seed: int) -> float:
    """The estimator as mimzoo had it: one set of 100 offsets reused for every patch and both directions."""
    offsets = np.random.default_rng(seed).integers(0, PATCH, size=(100, 2))
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    pixels = np.stack([cols[:, None] * PATCH + offsets[None, :, 1], rows[:, None] * PATCH + offsets[None, :, 0]], -1)
    return smaller(patch_map(h, pixels), patch_map(np.linalg.inv(h), pixels))[0]


@pytest.mark.parametrize("name, h", [("half-patch pan", PAN(8.0)), ("pan 40 px", PAN(40.0)), ("turn", TURN)])
def test_the_overlap_is_mimics_estimator(name, h):
    seeds = range(8)
    ours = np.mean([overlap(h, np.random.default_rng(s))[0] for s in seeds])
    upstream = np.mean([upstream_style_overlap(h, 100 + s) for s in seeds])
    assert abs(ours - upstream) < 0.02, (name, ours, upstream)
    if name == "half-patch pan":  # what the shared offsets did: neighbours broke ties alike and never collided
        shared = np.mean([shared_offsets_overlap(h, s) for s in seeds])
        assert shared > upstream + 0.1, (shared, upstream)


def test_the_seeded_draw_is_deterministic_per_pair_and_independent_across_pairs():
    h1, h2 = PAN(8.0), PAN(8.0) @ np.array([[1, 0, 0], [0, 1, 1e-3], [0, 0, 1]])
    assert overlap(h1) == overlap(h1)
    draws = [overlap(PAN(8.0 + 1e-9 * k))[0] for k in range(6)]  # the same geometry, other pairs: other pixels
    assert len(set(draws)) > 1 and overlap(h2)[0] == overlap(h2)[0]


def test_a_video_with_a_partial_last_second_gives_no_extra_pair(tmp_path):
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    for k in range(17):  # 3.4 s at 5 fps: MIMIC's seconds = int(17 // 5) = 3 -> frames at 0, 1, 2 s
        writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    writer.release()
    frames = video_frames(path)
    assert [f.time for f in frames] == [0.0, 1.0, 2.0]
    assert video_pairs(frames) == [(0, 1), (1, 2)]


def test_the_co3d_loop_bound_is_mimics():
    # MIMIC: i = 0, 10, ... while i < count - 5 - 1
    assert folder_pairs(26) == [(0, 5), (10, 15)]  # i = 20 would need 20 < 20
    assert folder_pairs(27) == [(0, 5), (10, 15), (20, 25)]


@pytest.mark.parametrize("height", [480, 483, 375])
def test_the_mannequin_crop_keeps_what_mimic_keeps(height):
    frame = np.arange(height, dtype=np.uint8).repeat(8).reshape(height, 8, 1).repeat(3, 2)
    kept = height - int(0.2 * height)  # MIMIC: frame[: -int(0.2 * height)]
    expected = cv2.resize(frame[:kept], (224, 224))
    assert np.array_equal(resize(frame, crop_bottom=0.2), expected)


def test_the_arkitscenes_retry_needs_an_overlap_strictly_above_the_window():
    """At exactly 75 % (147 of 196 patches) MIMIC neither keeps the pair nor retries (t, t + 2)."""
    overlaps = {(0, 1): 147 / 196, (0, 2): 0.6, (1, 2): 0.8, (1, 3): 0.6, (2, 3): 0.6}
    tested, opts = [], Options()

    def check(a, b):  # the test's overlaps, judged by the window as check_pair judges them
        tested.append((a, b))
        value = overlaps[(a, b)]
        return ("" if opts.low < value < opts.high else "overlap above window"), value, None

    rejected = Counter()
    kept = accepted_with_retry(4, check, opts, rejected)
    assert tested == [(0, 1), (1, 2), (1, 3)]  # no (0, 2): 0.75 is not above the window
    assert [(a, b) for a, b, *_ in kept] == [(1, 3)] and rejected["overlap above window"] == 1


def _tiny_video(path, frames=4, shift=0):
    from skimage import data

    photo = cv2.resize(data.astronaut(), (448, 448))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1.0, (224, 224))
    for k in range(frames):
        x = 40 * k + shift
        writer.write(cv2.cvtColor(np.ascontiguousarray(photo[100:324, x:x + 224]), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_a_rerun_with_other_options_or_a_changed_source_is_redone(tmp_path):
    from mimzoo.curate import curate

    video = _tiny_video(tmp_path / "pan.avi")
    wide = curate([str(video)], tmp_path / "out", workers=1, progress=False, options=Options(low=0.0, high=1.0))
    narrow = curate([str(video)], tmp_path / "out", workers=1, progress=False, options=Options(low=0.99, high=1.0))
    assert wide["pairs"] > 0 and narrow["pairs"] == 0  # the first run's pairs are not handed back
    _tiny_video(video, frames=6)  # the file was replaced (e.g. a longer copy finished)
    again = curate([str(video)], tmp_path / "out", workers=1, progress=False, options=Options(low=0.0, high=1.0))
    assert again["candidates"] == 5 and wide["candidates"] == 3


def test_a_half_copied_video_is_retried_and_a_missing_input_is_an_error(tmp_path, capsys):
    from mimzoo.cli import main as cli
    from mimzoo.curate import curate
    from mimzoo.errors import NotFoundError

    good = _tiny_video(tmp_path / "full.avi")
    video = tmp_path / "copy.avi"
    video.write_bytes(good.read_bytes()[:1500])  # still being copied
    first = curate([str(video)], tmp_path / "out", workers=1, progress=False, options=Options(low=0.0, high=1.0))
    assert first["failed"] == [str(video)] and first["pairs"] == 0
    video.write_bytes(good.read_bytes())  # the copy finished
    second = curate([str(video)], tmp_path / "out", workers=1, progress=False, options=Options(low=0.0, high=1.0))
    assert second["failed"] == [] and second["pairs"] > 0
    with pytest.raises(NotFoundError, match="do not exist"):
        curate([str(tmp_path / "missing.mp4")], tmp_path / "out2", workers=1, progress=False)
    assert not (tmp_path / "out2").exists()
    assert cli(["curate", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out3"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not exist" in err and "Traceback" not in err


def _children(pid: int) -> set[int]:
    from pathlib import Path

    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.add(int(status.parent.name))
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_curate_processes_stop_with_the_run(tmp_path, sig):
    """kill -9 of the parent takes its pool workers with it; Ctrl-C cancels what is queued and ends with one line,
    no traceback, keeping what was finished for the rerun."""
    import signal
    import subprocess
    import sys
    import time

    videos = [str(_tiny_video(tmp_path / f"v{i}.avi", frames=6, shift=i)) for i in range(8)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mimzoo.cli", "curate", *videos, "--out", str(out), "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    workers = set()
    while time.time() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the pool never started"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "pool workers outlived the run"
    if sig == "SIGINT":
        assert proc.returncode == 2 and "interrupted after" in err and "Traceback" not in err, err[-2000:]
        from mimzoo.curate import curate

        assert curate(videos, out, workers=1, progress=False)["sources"] == 8
