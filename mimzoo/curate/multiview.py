"""Multi-view sets (rendered or scanned scenes): MIMIC's synthetic-data rule, and an exact overlap from depth.

Layout: `<root>/<sample>/` holds the views of one sample as images (`*.jpg|png`), optionally each with
`<view>.depth.npy` (H x W metric depth, 0 = unknown) and `<view>.json` = {"K": 3 x 3 intrinsics, "pose": 4 x 4
camera-to-world}. All cross pairs of a sample are tested (MIMIC: panorama A x B and A x C); a view whose Laplacian
variance is below `min_sharpness` (MIMIC: 1000) is skipped, and the lowest-overlap pair inside the window is kept.
With depth and cameras for both views, the overlap is exact (pixels reprojected in 3-D) instead of homographic.
"""
from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

from .frames import read_frame
from .matching import SIZE, laplacian_variance, match, overlap, sample_pixels, sift, smaller, vote


def load_camera(view: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(depth, K, pose) rescaled to the 224 x 224 frame, or None when the view has no geometry."""
    depth_file, cam_file = view.with_suffix(".depth.npy"), view.with_suffix(".json")
    if not (depth_file.is_file() and cam_file.is_file()):
        return None
    depth = np.load(depth_file, allow_pickle=False).astype(np.float64)
    cam = json.loads(cam_file.read_text())
    h, w = shape
    scale = np.diag([SIZE / w, SIZE / h, 1.0])
    resized = cv2.resize(depth, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    return resized, scale @ np.array(cam["K"]), np.array(cam["pose"])


def reproject(src: tuple, dst: tuple, rng: np.random.Generator, depth_tolerance: float = 0.05) -> dict[int, int]:
    """Patch map by reprojection: sampled pixels of the source view -> 3-D -> the other view; a pixel votes only
    if it lands in front of the camera, inside, and agrees with the other view's depth (not occluded)."""
    (d1, k1, t1), (d2, k2, t2) = src, dst
    pts = sample_pixels(rng).astype(np.float64)
    x, y = pts[..., 0], pts[..., 1]
    z = d1[y.astype(int), x.astype(int)]
    rays = np.linalg.inv(k1) @ np.stack([x + 0.5, y + 0.5, np.ones_like(x)]).reshape(3, -1)
    world = t1[:3, :3] @ (rays * z.reshape(1, -1)) + t1[:3, 3:4]
    cam2 = np.linalg.inv(t2)
    p = cam2[:3, :3] @ world + cam2[:3, 3:4]
    uv = (k2 @ p)[:2] / np.maximum(p[2:], 1e-9)
    warped = (uv.T - 0.5).reshape(pts.shape)
    u = np.clip(warped[..., 0], 0, SIZE - 1).astype(int)
    v = np.clip(warped[..., 1], 0, SIZE - 1).astype(int)
    seen = d2[v, u]
    valid = (z > 0) & (p[2].reshape(z.shape) > 0) & (seen > 0) & \
        (np.abs(seen - p[2].reshape(z.shape)) <= depth_tolerance * seen)
    return vote(warped, valid)


def depth_overlap(a: tuple, b: tuple, seed: int = 0) -> float:
    """The overlap by reprojection, each direction with its own fresh pixels per patch (a seeded draw)."""
    rng = np.random.default_rng(seed)
    forward = reproject(a, b, rng)
    return smaller(forward, reproject(b, a, rng))[0]


def process_sample(folder: Path, low: float, high: float, min_sharpness: float = 1000.0):
    """The kept pair of one sample: (record, image A, image B) or None, and the rejection counts."""
    from collections import Counter

    rejected = Counter()
    views = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
    images, feats, cams = {}, {}, {}
    for v in views:
        try:
            raw = cv2.imread(str(v))
            img = read_frame(v)
        except ValueError:
            rejected["undecodable frame"] += 1
            continue
        if laplacian_variance(img) < min_sharpness:
            rejected["blurry or textureless view"] += 1
            continue
        images[v], feats[v] = img, sift(img)
        cams[v] = load_camera(v, raw.shape[:2])
    best = None
    for a, b in combinations(images, 2):
        m = match(feats[a], feats[b])
        if m.reason:
            rejected[m.reason] += 1
            continue
        value = depth_overlap(cams[a], cams[b]) if cams[a] and cams[b] else overlap(m.homography)[0]
        if not low < value < high:
            rejected["overlap below window" if value <= low else "overlap above window"] += 1
            continue
        if best is None or value < best[0]:
            best = (value, a, b, m)
    if best is None:
        return None, rejected
    value, a, b, m = best
    record = {"source": str(folder), "frame_a": views.index(a), "frame_b": views.index(b), "time_a": None,
              "time_b": None, "overlap": round(value, 6), "homography": m.homography.tolist(),
              "num_matches": m.num_matches, "num_inliers": m.num_inliers,
              "overlap_from": "depth" if cams[a] and cams[b] else "homography"}
    return (record, images[a], images[b]), rejected
