"""Candidate frames and pairs, MIMIC's way: videos give the frames at t = 0, gap, 2 gap, ... seconds and the
pairs (t, t + gap); frame folders (sorted by frame number) give groups of candidate pairs: (i, i + offset) for
i = 0, step, ... (CO3D), windows of frames (ScanNet) or every pair of a short sequence (DeMoN)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.images import IMAGE_EXTENSIONS
from ..errors import ConfigError
from .matching import SIZE

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


@dataclass
class Frame:
    index: int  # 0-based in decode order, or in the sorted folder
    time: float | None  # seconds (videos)
    image: np.ndarray  # 224 x 224 RGB uint8, resized like MIMIC (aspect not kept)


def resize(frame_rgb: np.ndarray, crop_bottom: float = 0.0) -> np.ndarray:
    """MIMIC: cv2.resize(img, (224, 224)), bilinear; its Mannequin script first cuts off the bottom 20 % of the
    frame (crop_bottom=0.2)."""
    if crop_bottom:  # MIMIC keeps frame[: -int(0.2 * h)]: h - int(0.2 * h) rows (a cut of 0 rows keeps them all)
        frame_rgb = frame_rgb[: frame_rgb.shape[0] - int(crop_bottom * frame_rgb.shape[0])]
    return cv2.resize(frame_rgb, (SIZE, SIZE))


def video_seconds(path: str | Path) -> int:
    """MIMIC's whole seconds of a video, `int(frame count // fps)` from the container (0 when it reports no rate):
    its Mannequin and ArkitScenes scripts skip a video with fewer than 3 / 5 of them."""
    fps, count = _header(path)
    return int(count // fps) if fps > 0 else 0


def _header(path: str | Path) -> tuple[float, float]:
    cap = cv2.VideoCapture(str(path))
    try:
        return cap.get(cv2.CAP_PROP_FPS) or 0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
    finally:
        cap.release()


def video_frames(path: str | Path, gap: float = 1.0, crop_bottom: float = 0.0) -> list[Frame]:
    """Decode sequentially and keep the first frame at or after each target time. A frame's time is index / fps
    (the container's own timestamp when it reports no frame rate): decoding every frame in order is exact and
    deterministic where seeking (MIMIC sets CAP_PROP_POS_MSEC) depends on the codec's key frames. Raises
    ValueError for a video that cannot be decoded. As MIMIC, a last partial second gives no frame: a video of
    `n` frames at `fps` has frames at t < int(n // fps) (MIMIC reads the container's count; this counts the frames
    actually decoded, which is the same for a sound file and safe for one whose header lies)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ConfigError("cannot open the video (corrupt, empty or an unsupported codec)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    kept, index, target = [], 0, 0.0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            time = index / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if time + 1e-6 >= target:
                kept.append(Frame(index, round(time, 6),
                                  resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), crop_bottom)))
                target = len(kept) * gap
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise ConfigError("no decodable frame")
    if fps > 0:  # MIMIC: seconds = int(frame count // fps), frames at t < seconds (no partial last second)
        seconds = int(index // fps)
        kept = [f for f in kept if f.time < seconds - 1e-6]
    return kept


def video_pairs(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(len(frames) - 1)]


def frame_number(path: Path) -> tuple:
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


def folder_frames(folder: str | Path) -> list[Path]:
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=frame_number)


def folder_pairs(count: int, step: int = 10, offset: int = 5) -> list[tuple[int, int]]:
    """MIMIC's CO3D loop: (i, i + offset) for i = 0, step, ... while i < count - offset - 1 (its bound, which
    leaves out the last possible pair)."""
    return [(i, i + offset) for i in range(0, count - offset - 1, step)]


def window_groups(count: int, window: int = 60, first: int = 10, second: int = 49) -> list[list[tuple[int, int]]]:
    """MIMIC's ScanNet rule: consecutive windows of `window` frames; in each, every pair of a frame among the
    window's first `first` and one among its frames [second, second + first) (100 candidates for 60 / 10 / 49)."""
    groups = []
    for start in range(0, count - window + 1, window):
        heads = range(start, start + first)
        tails = range(start + second, min(start + second + first, start + window))
        groups.append([(a, b) for a in heads for b in tails])
    return groups


def folder_groups(count: int, mode: str = "offset", step: int = 10, offset: int = 5,
                  window: int = 60) -> list[list[tuple[int, int]]]:
    """Candidate pairs in groups: "offset" (CO3D: (i, i + offset) every `step` frames, one pair per group),
    "windows" (ScanNet, see `window_groups`) or "all" (DeMoN: every i < j of the sequence, one group)."""
    if mode == "offset":
        return [[p] for p in folder_pairs(count, step, offset)]
    if mode == "windows":
        return window_groups(count, window)
    if mode == "all":
        return [[(i, j) for i in range(count) for j in range(i + 1, count)]] if count > 1 else []
    raise ConfigError(f"folder mode must be offset, windows or all; got {mode!r}")


def read_frame(path: Path, crop_bottom: float = 0.0) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ConfigError(f"cannot decode {path}")
    return resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), crop_bottom)
