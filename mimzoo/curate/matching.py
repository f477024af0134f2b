"""MIMIC's geometric test of a candidate pair: SIFT on 224 x 224 grayscale frames, Lowe's ratio test, RANSAC
homography, and the patch overlap on the 14 x 14 grid of 16-pixel patches (RAIVNLab/MIMIC datasets/utils.py)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

SIZE, PATCH = 224, 16
GRID = SIZE // PATCH
RATIO = 0.7  # Lowe's ratio
MIN_MATCHES = 10  # a pair needs more than this many good matches
RANSAC_THRESHOLD = 5.0
PIXELS_PER_PATCH = 100


@dataclass
class Features:
    keypoints: np.ndarray  # (K, 2) float32 pixel coordinates
    descriptors: np.ndarray | None  # (K, 128) float32


def sift(frame_rgb: np.ndarray, detector=None) -> Features:
    """SIFT (OpenCV defaults) on the grayscale 224 x 224 frame, computed once per frame."""
    detector = detector or cv2.SIFT_create()
    gray = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)
    kps, desc = detector.detectAndCompute(gray, None)
    return Features(np.array([k.pt for k in kps], dtype=np.float32).reshape(-1, 2), desc)


@dataclass
class Match:
    homography: np.ndarray | None  # A -> B, 3 x 3
    num_matches: int
    num_inliers: int
    reason: str | None  # why the pair was rejected, None if a homography was found


def match(a: Features, b: Features, matcher=None) -> Match:
    if a.descriptors is None or b.descriptors is None or len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return Match(None, 0, 0, "too few keypoints")
    matcher = matcher or cv2.BFMatcher()
    good = [m for m, n in (p for p in matcher.knnMatch(a.descriptors, b.descriptors, k=2) if len(p) == 2)
            if m.distance < RATIO * n.distance]
    if len(good) <= MIN_MATCHES:
        return Match(None, len(good), 0, "too few matches")
    src = a.keypoints[[m.queryIdx for m in good]].reshape(-1, 1, 2)
    dst = b.keypoints[[m.trainIdx for m in good]].reshape(-1, 1, 2)
    h, inliers = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_THRESHOLD)
    if h is None or not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-8:
        return Match(None, len(good), 0, "degenerate homography")
    return Match(h, len(good), int(inliers.sum()), None)


def sample_pixels(rng: np.random.Generator) -> np.ndarray:
    """(196, 100, 2) x, y pixels: for every patch its own 100 draws, with replacement, of the patch's 256 pixels
    (MIMIC's `get_random_pixels_from_patch`, called afresh for every patch and direction)."""
    index = rng.integers(0, PATCH * PATCH, size=(GRID * GRID, PIXELS_PER_PATCH))
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    return np.stack([cols[:, None] * PATCH + index % PATCH, rows[:, None] * PATCH + index // PATCH], -1)


def vote(warped: np.ndarray, valid: np.ndarray | None = None) -> dict[int, int]:
    """MIMIC's one-to-one patch correspondence from where each patch's sampled pixels land (196, 100, 2): each
    source patch (row-major, in order) votes for the target patch its pixels fall in ("out" when outside or not
    valid); the majority wins, a tie going to the value that reached the top count first in sampling order (MIMIC's
    `find_majority`), and a target is taken only once."""
    x, y = warped[..., 0], warped[..., 1]
    inside = (x >= 0) & (x < SIZE) & (y >= 0) & (y < SIZE)
    if valid is not None:
        inside &= valid
    target = np.where(inside, (np.clip(y, 0, SIZE - 1).astype(int) // PATCH) * GRID
                      + np.clip(x, 0, SIZE - 1).astype(int) // PATCH, GRID * GRID)  # GRID*GRID = "out"
    out, taken = {}, set()
    for src in range(GRID * GRID):
        winner = first_majority(target[src])
        if winner != GRID * GRID and winner not in taken:
            out[src] = winner
            taken.add(winner)
    return out


def first_majority(values: np.ndarray) -> int:
    """The most frequent value; among equals, the one whose last needed vote comes first."""
    counts = np.bincount(values)
    top = counts.max()
    tied = np.flatnonzero(counts == top)
    if len(tied) == 1:
        return int(tied[0])
    reached = [np.flatnonzero(values == v)[top - 1] for v in tied]
    return int(tied[int(np.argmin(reached))])


def patch_map(h: np.ndarray, pixels: np.ndarray) -> dict[int, int]:
    """The patch correspondence under a homography, for sampled pixels (196, 100, 2); float32 points as MIMIC."""
    pts = pixels.astype(np.float32)
    warped = cv2.perspectiveTransform(pts.reshape(-1, 1, 2), np.asarray(h, np.float64)).reshape(pts.shape)
    return vote(warped)


def smaller(forward: dict[int, int], backward: dict[int, int]) -> tuple[float, dict[int, int]]:
    """MIMIC keeps the smaller of the two directions (a conservative overlap); keys always in view A."""
    if len(forward) < len(backward):
        return len(forward) / GRID ** 2, forward
    return len(backward) / GRID ** 2, {a: b for b, a in backward.items()}


def pair_rng(h: np.ndarray) -> np.random.Generator:
    """The seeded draw of one pair: from the homography's bytes, so a pair always gets the same overlap (and a
    resumed run the same pairs) while different pairs get independent pixels, as MIMIC's unseeded draws are."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(np.asarray(h, np.float64).tobytes()).digest()[:8],
                                                "little"))


def overlap(h: np.ndarray, rng: np.random.Generator | None = None) -> tuple[float, dict[int, int]]:
    """MIMIC's conservative overlap: the patch map in both directions (H and its inverse), each with its own fresh
    pixels per patch; the smaller one, as a fraction of the 196 patches, with keys always in view A. MIMIC's
    estimator is random (unseeded); this is a seeded draw of the same estimator (`pair_rng` unless `rng`)."""
    rng = rng or pair_rng(h)
    forward = patch_map(h, sample_pixels(rng))
    return smaller(forward, patch_map(np.linalg.inv(h), sample_pixels(rng)))


def laplacian_variance(frame_rgb: np.ndarray) -> float:
    """MIMIC's blur / texture filter for rendered views (it skips views below 1000)."""
    return float(cv2.Laplacian(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
