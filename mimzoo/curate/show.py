"""`mimzoo curate show`: a curated pair as a picture, with its RANSAC inlier matches and the patches that
correspond (same colour in both views)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds
from PIL import Image

from ..errors import ConfigError, NotFoundError
from .matching import GRID, PATCH, match, overlap, sift


def load_pair(out: str | Path, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The index-th record of `out/pairs.jsonl` with its two views from the shard."""
    lines = (Path(out) / "pairs.jsonl").read_text().splitlines()
    if not 0 <= index < len(lines):
        raise ConfigError(f"{out}/pairs.jsonl has {len(lines)} pairs; asked for #{index}")
    record = json.loads(lines[index])
    for sample in wds.WebDataset(str(Path(out) / record["shard"]), shardshuffle=False, empty_check=False):
        r = json.loads(sample["json"])
        if (r["source"], r["frame_a"], r["frame_b"]) == (record["source"], record["frame_a"], record["frame_b"]):
            decode = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
            return decode(sample["0.jpg"]), decode(sample["1.jpg"]), record
    raise NotFoundError(f"pair #{index} is in the index but not in {record['shard']}: re-run mimzoo curate")


def draw_pair(a: np.ndarray, b: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """Side by side: corresponding patches tinted with the same colour, inlier matches as lines."""
    value, patches = overlap(np.asarray(homography))
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 255, (GRID * GRID, 3))
    tinted = [a.copy(), b.copy()]
    for src, dst in patches.items():
        for img, idx in ((tinted[0], src), (tinted[1], dst)):
            r, c = divmod(idx, GRID)
            block = img[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH]
            block[:] = (0.55 * block + 0.45 * colours[src]).astype(np.uint8)
    canvas = np.concatenate([tinted[0], np.full((a.shape[0], 8, 3), 255, np.uint8), tinted[1]], axis=1)
    fa, fb = sift(a), sift(b)
    m = match(fa, fb)
    if m.homography is not None:
        pred = cv2.perspectiveTransform(fa.keypoints.reshape(-1, 1, 2).astype(np.float64), m.homography)
        for (x0, y0), (x1, y1) in list(zip(fa.keypoints, pred.reshape(-1, 2)))[:60]:
            if 0 <= x1 < b.shape[1] and 0 <= y1 < b.shape[0]:
                cv2.line(canvas, (int(x0), int(y0)), (int(x1) + a.shape[1] + 8, int(y1)), (255, 255, 0), 1)
    cv2.putText(canvas, f"overlap {value:.2f}", (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return canvas


def show(out: str | Path, index: int, dst: str | Path) -> Path:
    a, b, record = load_pair(out, index)
    Image.fromarray(draw_pair(a, b, record["homography"])).save(dst)
    return Path(dst)
