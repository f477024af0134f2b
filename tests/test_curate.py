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
from mimzoo.curate import Options, curate
from mimzoo.curate.matching import overlap
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


def upstream_style_overlap(h: np.ndarray, seed: int) -> float:
    """MIMIC's estimator as its curation scripts run it, written plainly: for every patch and each direction, 100
    fresh pixels drawn with replacement (Python's random), warped, the patch they mostly land in (a tie goes to the
    value that reached the top count first), each target taken once; the smaller direction."""
    import random
    from collections import Counter

    rng = random.Random(seed)

    def one_way(hm):
        out = {}
        for patch in range(196):
            r, c = divmod(patch, 14)
            picks = rng.choices(range(256), k=100)
            pts = np.float32([[c * 16 + k % 16, r * 16 + k // 16] for k in picks]).reshape(-1, 1, 2)
            votes, best, seen = [], None, Counter()
            for x, y in cv2.perspectiveTransform(pts, hm).reshape(-1, 2):
                v = "out" if x < 0 or y < 0 or x >= 224 or y >= 224 else int(y) // 16 * 14 + int(x) // 16
                seen[v] += 1
                if best is None or seen[v] > seen[best]:
                    best = v
                votes.append(v)
            if best != "out" and best not in out.values():
                out[patch] = best
        return len(out)

    return min(one_way(h), one_way(np.linalg.inv(h))) / 196


def true_overlaps(h: np.ndarray) -> tuple[float, float]:
    """The spread of MIMIC's (random) measure on the true homography, over several draws."""
    values = [upstream_style_overlap(h, seed) for seed in range(3)] + [overlap(h)[0]]
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
    summary = curate([str(empty), str(broken), str(flat), str(path)], tmp_path / "out", workers=1, progress=False)
    assert "too few keypoints" in " ".join(summary["rejected"])
    assert summary["failed"] == [str(empty), str(broken)]  # reported, not recorded: the next run tries them again
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
    names = lambda folder: sorted(p.name for p in (folder / "shards").iterdir())
    assert names(out) == names(reference)


def planar_scene(root, tx: list[float], z: float = 5.0, f: float = 200.0, blur_last=False):
    """A textured plane at depth z seen by cameras translated along x (pinhole, 224 x 224): views, depth maps
    and camera files in the documented layout. The true map between views i and j is a shift of
    (tx_i - tx_j) f / z pixels."""
    import json as _json

    from skimage import data

    photo = cv2.resize(data.chelsea(), (900, 600))
    root.mkdir(parents=True)
    K = [[f, 0, 112], [0, f, 112], [0, 0, 1]]
    for i, t in enumerate(tx):
        # pixel u sees plane X = (u + 0.5 - 112) z / f + t; the texture maps X to photo column 100 + 40 X
        shift = 100 + 40 * (t - 112 * z / f) + 40 * z / f * 0.5
        M = np.array([[40 * z / f, 0, shift], [0, 40 * z / f, 150]], np.float64)
        view = cv2.warpAffine(photo, M, (224, 224), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        if blur_last and i == len(tx) - 1:
            view = cv2.GaussianBlur(view, (0, 0), 8)
        cv2.imwrite(str(root / f"view{i}.png"), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
        np.save(root / f"view{i}.depth.npy", np.full((224, 224), z))
        pose = np.eye(4)
        pose[0, 3] = t
        (root / f"view{i}.json").write_text(_json.dumps({"K": K, "pose": pose.tolist()}))


def test_depth_reprojection_overlap_on_a_known_scene(tmp_path):
    from mimzoo.curate.multiview import depth_overlap, load_camera

    planar_scene(tmp_path / "s", [0.0, 2.0])
    a, b = (load_camera(tmp_path / "s" / f"view{i}.png", (224, 224)) for i in range(2))
    shift = (0.0 - 2.0) * 200 / 5.0  # -80 px
    truth = overlap(np.array([[1, 0, shift], [0, 1, 0], [0, 0, 1]]))[0]
    assert depth_overlap(a, b) == pytest.approx(truth, abs=0.02)
    assert truth == pytest.approx((224 - 80) / 224, abs=0.02)


def test_multiview_sets_keep_the_lowest_overlap_pair_in_window(tmp_path):
    # sample 1: shifts of 40, 80 and 120 px between the three views -> overlaps ~0.82, ~0.64, ~0.46
    planar_scene(tmp_path / "sets" / "sample1", [0.0, 1.0, 2.0, 3.0])
    planar_scene(tmp_path / "sets" / "sample2", [0.0, 1.5, 9.0], blur_last=True)
    summary = curate([str(tmp_path / "sets")], tmp_path / "out", workers=1, progress=False,
                     options=Options(multiview=True, min_sharpness=10))  # a smooth photo, not a 1000-var render
    records = [json.loads(line) for line in open(tmp_path / "out" / "pairs.jsonl")]
    assert len(records) == 2 and all(r["overlap_from"] == "depth" for r in records)
    first = next(r for r in records if r["source"].endswith("sample1"))
    assert (first["frame_a"], first["frame_b"]) in {(0, 2), (1, 3)} and LOW < first["overlap"] < HIGH
    assert summary["rejected"].get("blurry or textureless view", 0) == 1


def test_show_draws_a_curated_pair(video, tmp_path):
    path, _ = video
    curate([str(path)], tmp_path / "out", workers=1, progress=False)
    assert cli(["curate", "show", str(tmp_path / "out"), "0", "--png", str(tmp_path / "pair.png")]) == 0
    from PIL import Image

    img = Image.open(tmp_path / "pair.png")
    assert img.size == (224 * 2 + 8, 224)


def test_ray_engine_gives_the_same_pairs(video, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'mimzoo[ray]')")
    path, _ = video
    copies = []
    for i in range(3):
        c = tmp_path / f"v{i}.avi"
        c.write_bytes(path.read_bytes())
        copies.append(str(c))
    curate(copies, tmp_path / "local", workers=1, progress=False)
    curate(copies, tmp_path / "ray", workers=2, progress=False, engine="ray")
    assert (tmp_path / "ray" / "pairs.jsonl").read_text() == (tmp_path / "local" / "pairs.jsonl").read_text()


def test_frame_folder_and_training_data(video, tmp_path):
    """A folder of the video's frames (named out of order) gives the video's pairs, and the trainer reads them."""
    path, _ = video
    cap = cv2.VideoCapture(str(path))
    frames = tmp_path / "frames"
    frames.mkdir()
    k = 0
    while True:
        ok, f = cap.read()
        if not ok:
            break
        cv2.imwrite(str(frames / f"img_{k}.png"), f)  # img_10 sorts before img_2 as text: order by number
        k += 1
    opts = Options(folder_step=1, folder_offset=1)
    curate([str(path)], tmp_path / "v", workers=1, progress=False)
    curate([str(frames)], tmp_path / "f", workers=1, progress=False, options=opts)
    frames = lambda index: [(json.loads(line)["frame_a"], json.loads(line)["frame_b"]) for line in open(index)]
    by_video, by_folder = frames(tmp_path / "v" / "pairs.jsonl"), frames(tmp_path / "f" / "pairs.jsonl")
    assert by_folder == by_video

    from mimzoo.data import PairDataModule

    dm = PairDataModule(data=str(tmp_path / "f" / "shards" / "*.tar").replace("*", next(
        (tmp_path / "f" / "shards").iterdir()).stem), size=64, batch_size=2, num_workers=0, shuffle_buffer=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image2"].dtype.is_floating_point is False


def test_candidate_groups_of_mimic_sources():
    from mimzoo.curate.frames import folder_groups, window_groups

    windows = window_groups(130)  # two full 60-frame windows, the last 10 frames start none
    assert len(windows) == 2 and all(len(w) == 100 for w in windows)
    assert windows[1][0] == (60, 109) and windows[1][-1] == (69, 118)
    assert folder_groups(4, "all") == [[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]
    assert folder_groups(20, "offset") == [[(0, 5)], [(10, 15)]]
    with pytest.raises(ValueError, match="unknown preset"):
        from mimzoo.curate import preset_options

        preset_options("kitti")


def test_demon_preset_keeps_the_lowest_overlap_pair_of_a_sequence(video, tmp_path):
    """Every pair of a short sequence is tested; pick="lowest" keeps exactly the accepted pair that a full run
    (pick="all") ranks lowest, and counts the others."""
    from mimzoo.curate import preset_options

    path, _ = video
    cap = cv2.VideoCapture(str(path))
    seq = tmp_path / "seq"
    seq.mkdir()
    for k in range(6):
        ok, f = cap.read()
        cv2.imwrite(str(seq / f"{k:04d}.jpg"), f)
    everything = curate([str(seq)], tmp_path / "all", workers=1, progress=False,
                        options=Options(folder_mode="all", pick="all"))
    lowest = curate([str(seq)], tmp_path / "low", workers=1, progress=False, options=preset_options("demon"))
    every = [json.loads(line) for line in open(tmp_path / "all" / "pairs.jsonl")]
    kept = [json.loads(line) for line in open(tmp_path / "low" / "pairs.jsonl")]
    assert everything["candidates"] == lowest["candidates"] == 15 and len(every) >= 2
    best = min(every, key=lambda r: r["overlap"])
    assert len(kept) == 1 and (kept[0]["frame_a"], kept[0]["frame_b"]) == (best["frame_a"], best["frame_b"])
    assert lowest["rejected"]["not the lowest overlap of its group"] == len(every) - 1
    assert cli(["curate", str(seq), "--out", str(tmp_path / "cli"), "--preset", "demon", "--workers", "1",
                "--quiet"]) == 0
    assert open(tmp_path / "cli" / "pairs.jsonl").read() == open(tmp_path / "low" / "pairs.jsonl").read()


def test_mannequin_preset_crops_the_bottom_and_skips_short_videos(video, tmp_path):
    from mimzoo.curate import preset_options
    from mimzoo.curate.frames import resize

    frame = np.zeros((100, 50, 3), np.uint8)
    frame[80:] = 255  # the bottom 20 % is white
    assert resize(frame, 0.2).max() == 0 and resize(frame).max() == 255
    path, _ = video  # 12 frames at 1 fps: 12 s
    long_enough = curate([str(path)], tmp_path / "a", workers=1, progress=False, options=preset_options("mannequin"))
    too_short = curate([str(path)], tmp_path / "b", workers=1, progress=False,
                       options=preset_options("mannequin", min_duration=20.0))
    assert long_enough["pairs"] > 0 and too_short["pairs"] == 0
    assert too_short["rejected"] == {"video shorter than 20 s": 1}


@pytest.fixture(scope="module")
def fast_pan(tmp_path_factory):
    """45 px per second across a real photo: consecutive frames overlap too much (~80 %), frames 2 s apart fall in
    MIMIC's window (~60 %)."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("pan") / "scene_42.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 1.0, (224, 224))
    for k in range(8):
        writer.write(cv2.cvtColor(np.ascontiguousarray(photo[500:724, 45 * k:45 * k + 224]), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_arkitscenes_retry_and_rotation_table(fast_pan, tmp_path):
    from mimzoo.curate import preset_options

    plain = curate([str(fast_pan)], tmp_path / "plain", workers=1, progress=False, options=Options())
    assert plain["pairs"] == 0 and plain["rejected"] == {"overlap above window": 7}
    table = tmp_path / "rotations.json"
    table.write_text(json.dumps({"scene_42": "a"}))
    curate([str(fast_pan)], tmp_path / "ark", workers=1, progress=False,
           options=preset_options("arkitscenes", rotations=str(table)))
    pairs = [json.loads(line) for line in open(tmp_path / "ark" / "pairs.jsonl")]
    # (0, 1) too close -> (0, 2) kept and frame 1 skipped -> (2, 3) too close -> (2, 4) kept ...
    assert [(p["frame_a"], p["frame_b"]) for p in pairs] == [(0, 2), (2, 4), (4, 6)]
    assert all(0.5 < p["overlap"] < 0.75 for p in pairs)
    # rotated 90 degrees clockwise: the pan now runs downwards, the homography translates along y
    h = np.array(pairs[0]["homography"])
    assert abs(h[1, 2]) > 60 and abs(h[0, 2]) < 10
    table.write_text(json.dumps({"another_video": "w"}))
    skipped = curate([str(fast_pan)], tmp_path / "skip", workers=1, progress=False,
                     options=preset_options("arkitscenes", rotations=str(table)))
    assert skipped["rejected"] == {"not in the rotation table": 1}
    with pytest.raises(ValueError, match="JSON file"):
        Options(rotations=str(tmp_path / "apple_rotation.npy"))
