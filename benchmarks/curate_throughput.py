"""Curation throughput: mimzoo vs a naive loop, in the same run, on a generated video (or your own).

    python benchmarks/curate_throughput.py                    # a 60 s synthetic camera video from a real photo
    python benchmarks/curate_throughput.py --video my.mp4
    python benchmarks/curate_throughput.py --scaling 1 2 --videos 4 --seconds 30   # `curate` with 1 and 2 processes

mimzoo decodes the video once in order, computes SIFT once per frame and reuses it for both pairs a frame belongs
to, and measures the patch overlap with vectorised votes. The naive loop does what a direct port of MIMIC's
scripts does for every candidate pair: seek to both timestamps, compute SIFT for both frames, and vote patch by
patch in Python with fresh random pixels (MIMIC's estimator). Both use the same matcher and thresholds, on one
core; the accepted pairs are compared (the estimator being random, pairs at the window's edges may differ).
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from mimzoo.curate import Options, process
from mimzoo.curate.frames import resize
from mimzoo.curate.matching import GRID, PATCH, SIZE, match, sift


def synthetic_video(path: Path, seconds: int, fps: int = 10) -> Path:
    from skimage import data

    photo = cv2.resize(data.astronaut(), (1400, 1400), interpolation=cv2.INTER_CUBIC)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for k in range(seconds * fps):
        t = k / fps
        cx, cy = 700 + 350 * np.sin(t / 1.7), 700 + 300 * np.sin(t / 1.3)
        s, a = 0.5 + 0.1 * np.sin(t / 3), np.deg2rad(5 * np.sin(t / 4))
        R = np.array([[s * np.cos(a), -s * np.sin(a), 0], [s * np.sin(a), s * np.cos(a), 0], [0, 0, 1]])
        M = np.array([[1, 0, 160], [0, 1, 120], [0, 0, 1]]) @ R @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        writer.write(cv2.cvtColor(cv2.warpPerspective(photo, M, (320, 240)), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def naive_overlap(h: np.ndarray, rng: random.Random) -> float:
    """MIMIC's estimator as its scripts run it: for every patch and each direction, 100 fresh pixels drawn with
    replacement, warped one by one, the most frequent patch (first to reach the top count) taken once."""
    def one_way(hm):
        out = {}
        for src in range(GRID * GRID):
            r, c = divmod(src, GRID)
            votes, best = Counter(), None
            for k in rng.choices(range(PATCH * PATCH), k=100):
                pt = np.float32([[[c * PATCH + k % PATCH, r * PATCH + k // PATCH]]])
                x, y = cv2.perspectiveTransform(pt, hm)[0, 0]
                v = "out" if not (0 <= x < SIZE and 0 <= y < SIZE) else int(y) // PATCH * GRID + int(x) // PATCH
                votes[v] += 1
                if best is None or votes[v] > votes[best]:
                    best = v
            if best != "out" and best not in out.values():
                out[src] = best
        return len(out)
    return min(one_way(h), one_way(np.linalg.inv(h))) / GRID ** 2


def naive(video: str, opts: Options) -> tuple[list[tuple[int, int]], int]:
    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS)
    seconds = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) / fps)
    accepted, frames, rng = [], 0, random.Random(0)

    def frame_at(t):
        cap.set(cv2.CAP_PROP_POS_MSEC, t * 1000)
        ok, f = cap.read()
        return resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)) if ok else None

    for t in range(int(seconds / opts.gap) - 1):
        a, b = frame_at(t * opts.gap), frame_at((t + 1) * opts.gap)
        frames += 2
        if a is None or b is None:
            continue
        m = match(sift(a), sift(b))
        if m.reason is None and opts.low < naive_overlap(m.homography, rng) < opts.high:
            accepted.append((t, t + 1))
    return accepted, frames


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=None)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--scaling", type=int, nargs="*", default=None,
                   help="instead: time `mimzoo.curate.curate` over --videos videos with each of these process counts")
    p.add_argument("--videos", type=int, default=4)
    args = p.parse_args()
    cv2.setNumThreads(1)
    if args.scaling:
        return scaling(args)
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or str(synthetic_video(Path(tmp) / "camera.avi", args.seconds))
        opts = Options()
        start = time.perf_counter()
        result = process(video, str(Path(tmp) / "out"), opts)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        naive_pairs, naive_frames = naive(video, opts)
        theirs = time.perf_counter() - start
    candidates = result["candidates"]
    print(json.dumps({
        "video": args.video or f"synthetic {args.seconds} s, 320x240, 10 fps", "candidate_pairs": candidates,
        "accepted": len(result["pairs"]), "naive_accepted": len(naive_pairs),
        # MIMIC's overlap is a random estimate: near the window's edges a pair can fall either way in either run
        "pairs_in_common": len({(round(r["time_a"]), round(r["time_b"])) for r in result["pairs"]} & set(naive_pairs)),
        "mimzoo": {"seconds": round(ours, 2), "sampled_frames_per_s": round((candidates + 1) / ours, 1),
                   "candidate_pairs_per_s": round(candidates / ours, 1)},
        "naive": {"seconds": round(theirs, 2), "sampled_frames_per_s": round(naive_frames / theirs, 1),
                  "candidate_pairs_per_s": round(candidates / theirs, 1)},
        "speedup": round(theirs / ours, 1), "cores": 1}, indent=1))


def scaling(args) -> None:
    """Candidate pairs/s of the whole `curate` run (decode, SIFT, overlap, shard writing) with 1, 2, ... worker
    processes over the same videos; the work is split by source (one video per process)."""
    from mimzoo.curate import curate

    with tempfile.TemporaryDirectory() as tmp:
        videos = [str(synthetic_video(Path(tmp) / f"camera{i}.avi", args.seconds)) for i in range(args.videos)]
        rows, base = [], None
        for workers in args.scaling:
            start = time.perf_counter()
            summary = curate(videos, Path(tmp) / f"out{workers}", workers=workers, progress=False)
            seconds = time.perf_counter() - start
            candidates = summary["candidates"]
            rate = candidates / seconds
            base = base or rate
            rows.append({"processes": workers, "seconds": round(seconds, 2), "candidate_pairs": candidates,
                         "candidate_pairs_per_s": round(rate, 1), "scaling": round(rate / base, 2)})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
