"""MIMIC curation on a video made from a real photo by a virtual camera with known homographies."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from mimzoo.cli import main as cli
from mimzoo.curate import curate
from mimzoo.curate.matching import OFFSETS, overlap, patch_map
from mimzoo.data import read_records

LOW, HIGH = 0.5, 0.75


CENTERS = [(300, 300), (330, 310), (400, 330), (610, 360), (630, 520), (560, 690), (400, 710), (380, 690),
           (300, 520), (310, 500), (480, 480), (700, 470)]


def camera(k: int) -> np.ndarray:
    """Photo (1024 x 1024) -> frame (224 x 224) for frame k: a wandering pan with zoom and a slow rotation."""
    s = 0.45 + 0.05 * np.sin(k / 2.0)
    a = np.deg2rad(4 * np.sin(k / 3.0))
    cx, cy = CENTERS[k]
    R = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0], [0, 0, 1]])
    return np.array([[1, 0, 112], [0, 1, 112], [0, 0, 1]]) @ R @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])


def true_overlaps(h: np.ndarray) -> tuple[float, float]:
    """MIMIC's measure on the true homography, over several pixel samplings (it is sensitive to vote ties)."""
    import mimzoo.curate.matching as m

    values = []
    for seed in range(6):
        m_offsets = np.random.default_rng(100 + seed).integers(0, 16, size=(100, 2))
        fwd, bwd = patch_map(h, m_offsets), patch_map(np.linalg.inv(h), m_offsets)
        values.append(min(len(fwd), len(bwd)) / 196)
    values.append(overlap(h)[0])
    return min(values), max(values)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from skimage import data

    photo = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    root = tmp_path_factory.mktemp("videos")
    path = root / "pan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1.0, (224, 224))
    frames = 12
    for k in range(frames):
        frame = cv2.warpPerspective(photo, camera(k), (224, 224), borderMode=cv2.BORDER_REFLECT)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    truth = {(k, k + 1): camera(k + 1) @ np.linalg.inv(camera(k)) for k in range(frames - 1)}
    return path, truth


def test_overlap_of_a_pure_shift_is_the_shared_area():
    h = np.array([[1, 0, 64.0], [0, 1, 0], [0, 0, 1]])
    assert overlap(h)[0] == pytest.approx((224 - 64) / 224, abs=0.01)
    assert overlap(np.eye(3))[0] == 1.0


def test_accepted_pairs_match_ground_truth(video, tmp_path):
    path, truth = video
    summary = curate([str(path)], tmp_path / "out", workers=1, progress=False)
    records = [json.loads(line) for line in open(tmp_path / "out" / "pairs.jsonl")]
    accepted = {(r["frame_a"], r["frame_b"]): r for r in records}
    spread = {pair: true_overlaps(h) for pair, h in truth.items()}
    assert summary["candidates"] == len(truth)
    for pair, r in accepted.items():
        lo, hi = spread[pair]
        assert lo - 0.05 <= r["overlap"] <= hi + 0.05, (pair, r["overlap"], spread[pair])
        assert r["time_b"] - r["time_a"] == pytest.approx(1.0) and r["num_inliers"] <= r["num_matches"]
    for pair, (lo, hi) in spread.items():
        clearly_in = lo > LOW + 0.02 and hi < HIGH - 0.02
        clearly_out = hi < LOW - 0.02 or lo > HIGH + 0.02
        if clearly_in:
            assert pair in accepted, (pair, spread[pair])
        if clearly_out:
            assert pair not in accepted, (pair, spread[pair])
    assert len(accepted) >= 2, "the test video should give a few accepted pairs"
    # the shard holds exactly the index's records, with both views
    shard = tmp_path / "out" / records[0]["shard"]
    assert [r["frame_a"] for r in read_records(str(shard))] == [r["frame_a"] for r in records]
    assert (tmp_path / "out" / "overlap_histogram.png").is_file()


def test_deterministic(video, tmp_path):
    path, _ = video
    curate([str(path)], tmp_path / "a", workers=1, progress=False)
    curate([str(path)], tmp_path / "b", workers=1, progress=False)
    assert (tmp_path / "a" / "pairs.jsonl").read_text() == (tmp_path / "b" / "pairs.jsonl").read_text()


def test_bad_inputs_are_counted_not_fatal(video, tmp_path):
    path, _ = video
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(path.read_bytes()[:2000])
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(8):  # textureless frames: no keypoints
        cv2.imwrite(str(flat / f"frame_{i:04d}.png"), np.full((64, 64, 3), 128, np.uint8))
    summary = curate([str(empty), str(broken), str(flat), str(tmp_path / "missing.mp4"), str(path)],
                     tmp_path / "out", workers=1, progress=False)
    reasons = " ".join(summary["rejected"])
    assert "unreadable source" in reasons and "too few keypoints" in reasons
    assert summary["pairs"] >= 2
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_resume_after_kill_gives_the_same_pairs(video, tmp_path):
    path, _ = video
    copies = []
    for i in range(6):
        c = tmp_path / f"v{i}.avi"
        c.write_bytes(path.read_bytes())
        copies.append(str(c))
    reference = tmp_path / "ref"
    curate(copies, reference, workers=1, progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mimzoo.cli", "curate", *copies, "--out", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "sources").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cli(["curate", *copies, "--out", str(out), "--workers", "2", "--quiet"]) == 0
    assert (out / "pairs.jsonl").read_text() == (reference / "pairs.jsonl").read_text()
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(p.name for p in (reference / "shards").iterdir())
