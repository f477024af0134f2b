"""`mimzoo curate`: sources -> candidate pairs -> MIMIC's test -> pair shards, in parallel and resumable.

Each source (a video or a frame folder) is one unit of work that ends with two atomic renames: its shard
(`shards/<id>.tar`, possibly absent when nothing was accepted) and then its record (`sources/<id>.json`). A source
with a record is done; a run killed at any moment (kill -9 included) and started again redoes only unfinished
sources, so it ends with exactly the pairs of an uninterrupted run. The index (`pairs.jsonl`), the summary and the
overlap histogram are rebuilt from the source records at the end.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..checkpoint import atomic_path, remove_leftovers
from ..data.shards import write_pair_shard
from ..errors import ConfigError, Error, NotFoundError
from .frames import (
    VIDEO_EXTENSIONS,
    folder_frames,
    folder_groups,
    read_frame,
    video_frames,
    video_pairs,
    video_seconds,
)
from .matching import match, overlap, sift

log = logging.getLogger("mimzoo")


@dataclass
class Options:
    """MIMIC's test and candidate rules; `preset_options(name)` gives those of its per-source scripts."""

    low: float = 0.5  # accept pairs with low < overlap < high (MIMIC's code: 50 % and 75 %, exclusive)
    high: float = 0.75
    gap: float = 1.0  # seconds between the two frames of a video pair
    folder_step: int = 10  # frame folders: pairs (i, i + folder_offset) for i = 0, step, 2 step, ...
    folder_offset: int = 5
    multiview: bool = False  # inputs are multi-view sets: one sub-folder of views per sample (see multiview.py)
    min_sharpness: float = 1000.0  # multi-view sets: skip views with a lower Laplacian variance
    folder_mode: str = "offset"  # frame folders: "offset" (CO3D), "windows" (ScanNet) or "all" (DeMoN)
    window: int = 60  # folder_mode "windows": frames per window
    pick: str = "all"  # "all" accepted pairs, or the "lowest"-overlap accepted pair of each candidate group
    min_duration: float = 0.0  # videos shorter than this (seconds) are skipped
    crop_bottom: float = 0.0  # fraction of each frame's height cut off at the bottom before resizing
    retry: bool = False  # videos: when (t, t + 1) overlaps too much, try (t, t + 2) (MIMIC's ArkitScenes loop)
    rotations: str | None = None  # JSON {video stem: "w" | "a" | "z" | "s"}; videos not listed are skipped

    def __post_init__(self):
        if self.pick not in ("all", "lowest"):
            raise ConfigError(f"pick must be 'all' or 'lowest', got {self.pick!r}")
        if self.folder_mode not in ("offset", "windows", "all"):
            raise ConfigError(f"folder_mode must be offset, windows or all; got {self.folder_mode!r}")
        if self.rotations is not None and (not str(self.rotations).endswith(".json") or
                                           not Path(self.rotations).is_file()):
            raise ConfigError(f"rotations must be a JSON file {{video stem: w|a|z|s}}, got {self.rotations!r} (see "
                             f"mimzoo.curate.pipeline.video_rotation for converting MIMIC's apple_rotation.npy)")
        if not 0 <= self.crop_bottom < 1:
            raise ConfigError(f"crop_bottom is a fraction of the frame height in [0, 1), got {self.crop_bottom}")


# MIMIC's per-source scripts (datasets/*_multipro.py, demon.py), as options
PRESETS = {
    "co3d": {"folder_mode": "offset", "folder_step": 10, "folder_offset": 5},
    "scannet": {"folder_mode": "windows", "window": 60, "pick": "lowest"},
    "demon": {"folder_mode": "all", "pick": "lowest"},
    "mannequin": {"gap": 1.0, "min_duration": 3.0, "crop_bottom": 0.2},
    "arkitscenes": {"gap": 1.0, "min_duration": 5.0, "retry": True},  # + rotations: its per-video table
}


ROTATIONS = {"w": None, "a": cv2.ROTATE_90_CLOCKWISE, "z": cv2.ROTATE_180, "s": cv2.ROTATE_90_COUNTERCLOCKWISE}


def video_rotation(source: str, table: str | None) -> str | None:
    """The video's entry in a rotation table (JSON, keyed by file stem); "w" (upright) without a table, None when
    the table does not list it. MIMIC ships its ArkitScenes table as a pickled .npy: convert it once with
    `json.dump(numpy.load(path, allow_pickle=True).item(), f)` (only for a file you trust)."""
    if table is None:
        return "w"
    entries = _rotation_table(str(table), Path(table).stat().st_mtime_ns)
    code = entries.get(Path(source).stem)
    if code is not None and code not in ROTATIONS:
        raise ConfigError(f"{table}: rotation {code!r} for {Path(source).stem}; expected one of w, a, z, s")
    return code


@functools.lru_cache(maxsize=4)
def _rotation_table(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


def rotate(image: np.ndarray, code: str) -> np.ndarray:
    """After the resize, as MIMIC's ArkitScenes script: a = 90 degrees clockwise, z = 180, s = 90 counter-clockwise."""
    return image if ROTATIONS[code] is None else np.ascontiguousarray(cv2.rotate(image, ROTATIONS[code]))


def preset_options(name: str, **overrides) -> Options:
    """Options for one of MIMIC's sources (see PRESETS), with any field overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return Options(**{**PRESETS[name], **overrides})


def expand(inputs: list[str], multiview: bool = False) -> list[str]:
    """Videos, folders of frames (or folders of videos), and list files (one input per line); with multiview,
    each folder is one multi-view set."""
    out = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix in (".txt", ".lst"):
            out += expand([line.strip() for line in p.read_text().splitlines() if line.strip()], multiview)
        elif p.is_dir() and not multiview:
            videos = sorted(v for v in p.rglob("*") if v.suffix.lower() in VIDEO_EXTENSIONS)
            out += [str(v) for v in videos] if videos else [str(p)]
        else:
            out.append(str(p))  # a video, or a missing path that will be reported as such
    return out


def source_id(source: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source).stem)[:40]
    return f"{stem}-{hashlib.sha1(os.path.abspath(source).encode()).hexdigest()[:10]}"


def process(source: str, out: str, opts: Options) -> dict:
    """One source: frames, SIFT once per frame, every candidate pair tested; writes the shard, then the record."""
    rejected, records, samples = Counter(), [], []
    sid = source_id(source)
    record_path, shard = Path(out) / "sources" / f"{sid}.json", Path(out) / "shards" / f"{sid}.tar"
    try:
        made = made_by(source, opts)  # what is read below: a file that changes meanwhile is redone
        if opts.multiview:
            from .multiview import process_sample

            for sample in sorted(p for p in Path(source).iterdir() if p.is_dir()):
                kept, why = process_sample(sample, opts.low, opts.high, opts.min_sharpness)
                rejected.update(why)
                if kept:
                    record, img_a, img_b = kept
                    records.append(record)
                    samples.append((f"{source_id(str(sample))}", img_a, img_b, record))
            groups, frames = [], {}
        elif Path(source).is_dir():
            paths = folder_frames(source)
            groups = folder_groups(len(paths), opts.folder_mode, opts.folder_step, opts.folder_offset, opts.window)
            needed = sorted({i for group in groups for p in group for i in p})
            frames = {}
            for i in needed:
                try:
                    frames[i] = (i, None, read_frame(paths[i], opts.crop_bottom))
                except ValueError:
                    rejected["undecodable frame"] += 1
        else:
            if not Path(source).is_file():
                raise ConfigError("no such file")
            rotation = video_rotation(source, opts.rotations)
            groups, frames = [], {}
            if rotation is None:
                rejected["not in the rotation table"] += 1
            elif opts.min_duration and video_seconds(source) < opts.min_duration:  # MIMIC: whole seconds
                rejected[f"video shorter than {opts.min_duration:g} s"] += 1
            else:
                decoded = video_frames(source, opts.gap, opts.crop_bottom)
                groups = [[p] for p in video_pairs(decoded)]
                frames = {k: (f.index, f.time, rotate(f.image, rotation)) for k, f in enumerate(decoded)}
        features = {k: sift(img) for k, (_, _, img) in frames.items()}
        if opts.retry and not Path(source).is_dir() and not opts.multiview:
            kept = accepted_with_retry(len(frames), lambda a, b: check_pair(a, b, frames, features, opts), opts,
                                       rejected)
        else:
            kept = accepted_pairs(groups, frames, features, opts, rejected)
        for a, b, value, m in kept:
            (ia, ta, img_a), (ib, tb, img_b) = frames[a], frames[b]
            record = {"source": source, "frame_a": ia, "frame_b": ib, "time_a": ta, "time_b": tb,
                      "overlap": round(value, 6), "homography": m.homography.tolist(),
                      "num_matches": m.num_matches, "num_inliers": m.num_inliers}
            records.append(record)
            samples.append((f"{sid}-{ia:07d}-{ib:07d}", img_a, img_b, record))
    except ValueError as e:
        # not recorded as done: a file still being copied, or replaced by a good one, is tried again next run; a
        # record of an earlier version of the source no longer holds either
        record_path.unlink(missing_ok=True)
        shard.unlink(missing_ok=True)
        return {"source": source, "id": sid, "failed": f"unreadable source: {e}"}
    shard.parent.mkdir(parents=True, exist_ok=True)
    if samples:
        write_pair_shard(shard, samples)
    else:  # a shard of an earlier run (other options, an older version of the source) would still be read
        shard.unlink(missing_ok=True)
    result = {"source": source, "id": sid, "shard": f"shards/{sid}.tar" if samples else None,
              "candidates": len(records) + sum(rejected.values()), "pairs": records, "rejected": dict(rejected),
              "made_by": made}
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(result))
    return result


def fingerprint(source: str) -> dict:
    """What the source was when it was curated: a file's size and mtime, a folder's files' names, sizes and
    mtimes (as one digest)."""
    p = Path(source)
    if p.is_file():
        st = p.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"files": h.hexdigest()}


RECORD_VERSION = 2  # records of other versions (another overlap estimator) are curated again


def made_by(source: str, opts: Options) -> dict:
    """What a source record was made from, checked on every rerun: the options, the source's fingerprint and, with
    a rotation table, the video's entry in it (an edited table redoes only the videos whose entry changed)."""
    made = {"version": RECORD_VERSION, "options": asdict(opts), "source": fingerprint(source)}
    if opts.rotations is not None and not opts.multiview and Path(source).is_file():
        made["rotation"] = video_rotation(source, opts.rotations)
    return made


def check_pair(a: int, b: int, frames: dict, features: dict, opts: Options) -> tuple[str, float, object]:
    """MIMIC's test of one candidate: ("", overlap, match) when accepted, else (reason, overlap or nan, match)."""
    if a not in frames or b not in frames:
        return "undecodable frame", float("nan"), None
    m = match(features[a], features[b])
    if m.reason:
        return m.reason, float("nan"), m
    value, _ = overlap(m.homography)
    if not opts.low < value < opts.high:
        return ("overlap below window" if value <= opts.low else "overlap above window"), value, m
    return "", value, m


def accepted_pairs(groups: list[list[tuple[int, int]]], frames: dict, features: dict, opts: Options,
                   rejected: Counter) -> list[tuple[int, int, float, object]]:
    """MIMIC's test on every candidate, counting each rejection; with pick="lowest" only the accepted pair of least
    overlap survives in each group (ScanNet, DeMoN)."""
    kept = []
    for group in groups:
        passed = []
        for a, b in group:
            why, value, m = check_pair(a, b, frames, features, opts)
            if why:
                rejected[why] += 1
            else:
                passed.append((a, b, value, m))
        if opts.pick == "lowest" and len(passed) > 1:
            best = min(passed, key=lambda p: p[2])
            rejected["not the lowest overlap of its group"] += len(passed) - 1
            passed = [best]
        kept += passed
    return kept


def accepted_with_retry(count: int, check, opts: Options, rejected: Counter) -> list[tuple[int, int, float, object]]:
    """MIMIC's ArkitScenes loop over a video's frames t = 0, 1, 2, ... s: test (t, t + 1); when its overlap is above
    the window (strictly: exactly `high` is rejected without a retry), test (t, t + 2) instead and, if that is
    kept, skip a frame. `check(a, b)` tests one candidate (`check_pair` on the video's frames)."""
    kept, i = [], 0
    while i < count - 1:
        why, value, m = check(i, i + 1)
        if not why:
            kept.append((i, i + 1, value, m))
        elif why == "overlap above window" and value > opts.high and i + 2 < count:  # strictly, as MIMIC
            why, value, m = check(i, i + 2)
            if not why:
                kept.append((i, i + 2, value, m))
                i += 1
            else:
                rejected[why] += 1
        else:
            rejected[why] += 1
        i += 1
    return kept


def curate(inputs: list[str], out: str | os.PathLike, workers: int | None = None, options: Options | None = None,
           progress: bool = True, engine: str = "local", ray_address: str | None = None) -> dict:
    """Curate pairs from every input into `out`; returns the summary (also written to summary.json).

    engine="local": a process pool on this machine. engine="ray": one Ray task per source on the cluster at
    `ray_address` (default: $RAY_ADDRESS, or a local Ray started here); `out` must then be a folder every node
    can write. Both write the same files, atomically per source, so either can resume the other's run.

    Ctrl-C or SIGTERM stops the run at once and raises `Interrupted` (one line from the CLI): the sources already
    finished keep their records, the ones in progress or queued are left for the next run of the same command."""
    out, opts = Path(out), options or Options()
    sources = expand(inputs, opts.multiview)
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise NotFoundError(f"{len(missing)} input(s) do not exist: {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}; nothing was curated")
    out.mkdir(parents=True, exist_ok=True)
    left = [p for d in ("sources", "shards") for p in remove_leftovers(out / d)]  # one run per folder at a time
    if left:
        log.info(f"curate: removed {len(left)} temporary file(s) of an earlier run that was killed")
    todo, redo = [], {}
    for s in sources:
        why = record_state(out / "sources" / f"{source_id(s)}.json", s, opts)
        if why is not None:
            todo.append(s)
            if why != "new":
                redo.setdefault(why, []).append(s)
    for why, redone in redo.items():
        log.warning(f"curate: {len(redone)} source(s) in {out} {why}; curating them again")
    workers = workers if workers is not None else min(len(todo), os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), initial=len(sources) - len(todo), desc="curate", unit="source")
    finished = []

    def advance(result: dict) -> None:
        report_failure(result)
        finished.append(result)
        bar and bar.update()

    try:
        with _sigterm_unwinds():
            if engine == "ray":
                _run_ray(todo, str(out), opts, workers, ray_address, advance)
            elif workers <= 1:
                for s in todo:
                    advance(process(s, str(out), opts))
            else:
                run_pool(todo, str(out), opts, workers, advance)
    except (KeyboardInterrupt, _Terminated, BrokenProcessPool) as e:
        done = len(sources) - len(todo) + sum("failed" not in r for r in finished)
        why = {KeyboardInterrupt: "by Ctrl-C", _Terminated: "by SIGTERM"}.get(type(e), "because a worker process "
                                                                            "died (killed, or out of memory?)")
        raise Interrupted(f"interrupted {why} with {done} of {len(sources)} sources done; they are kept in {out}: "
                          f"run the same command again to curate the rest") from None
    finally:
        bar and bar.close()
    return finish(out, sources)


def record_state(record: Path, source: str, opts: Options) -> str | None:
    """None when the source's record is valid for these options and this version of the source; else why not."""
    if not record.is_file():
        return "new"
    try:
        made = json.loads(record.read_text()).get("made_by")
    except (OSError, ValueError):
        return "have a damaged record"
    now = made_by(source, opts)
    if not isinstance(made, dict) or made.get("version") != now["version"]:
        return "were curated by an older mimzoo"
    if made.get("options") != now["options"]:
        old = made.get("options") or {}
        changed = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in now["options"].items() if old.get(k) != v)
        return f"were curated with other options ({changed})"
    if made != now:
        return "have changed since they were curated"
    return None


class Interrupted(Error, RuntimeError):
    """Curation stopped before its end (Ctrl-C, SIGTERM, a worker that died); every finished source is kept and the
    same command continues from there."""


class _Terminated(BaseException):
    """SIGTERM, raised in the parent's main thread so that the run unwinds as after Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated


@contextmanager
def _sigterm_unwinds():
    """Within: SIGTERM raises `_Terminated` (the main thread only: elsewhere Python cannot set a handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run_pool(todo: list[str], out: str, opts: Options, workers: int, advance) -> None:
    """The sources on a process pool, at most 2 x workers in flight (a million sources are not a million queued
    tasks). Any exception here (Ctrl-C, SIGTERM, a dead worker, an error in a source) cancels what is queued and ends
    the workers before it propagates: a worker in the middle of a source removes its temporary files and exits,
    and that source, having no record, is curated by the next run."""
    import multiprocessing

    direct = multiprocessing.get_start_method() != "forkserver"  # the workers' parent is this process
    pool = ProcessPoolExecutor(workers, initializer=worker_init, initargs=(os.getpid(), direct))
    queue, pending, pids = iter(todo), set(), set()
    try:
        while True:
            for s in itertools.islice(queue, 2 * workers - len(pending)):
                pending.add(pool.submit(run_source, s, out, opts))
            pids.update(getattr(pool, "_processes", None) or ())  # {pid: process} of CPython's executor
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                advance(f.result())
    except BaseException:
        for pid in pids:  # SIGTERM: see worker_init; the pool then finds them gone and shuts down
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# -- pool workers: they stop with the run ---------------------------------------------------------------------------
_in_source = [False]  # in a worker: True while it curates a source


class _Stop(BaseException):
    """Raised in a worker by SIGTERM while it curates a source: the source's `finally` blocks remove its
    temporary files on the way out."""


def worker_init(parent: int, direct: bool = True) -> None:
    """Pool initializer (importable, so any start method can run it): Ctrl-C is ignored (it reaches the whole
    process group, and the parent decides); SIGTERM ends the worker (unwinding a source in progress); on Linux the
    kernel sends SIGTERM when the parent dies (PR_SET_PDEATHSIG, so kill -9 of the run ends its workers), and a
    watchdog thread does the same anywhere, polling the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)  # also replaces a handler inherited through fork
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    ppid = os.getppid()
    if direct and ppid != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True, name="mimzoo-watch-parent").start()


def _watch_parent(ppid: int) -> None:
    while os.getppid() == ppid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)  # a source that does not unwind in 10 s
    os._exit(1)


def _worker_sigterm(signum, frame):
    if _in_source[0]:
        raise _Stop
    os._exit(128 + signum)


def run_source(source: str, out: str, opts: Options) -> dict:
    """`process` in a pool worker, ended cleanly by SIGTERM (see worker_init)."""
    try:
        _in_source[0] = True
        try:
            return process(source, out, opts)
        finally:
            _in_source[0] = False
    except _Stop:
        os._exit(128 + signal.SIGTERM)


def _run_ray(todo: list[str], out: str, opts: Options, workers: int, address: str | None, advance) -> None:
    try:
        import ray
    except ImportError as e:
        raise ConfigError("engine 'ray' needs Ray: pip install 'mimzoo[ray]'") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else max(1, workers), include_dashboard=False,
                 log_to_driver=False)
    pending = []
    try:
        task = ray.remote(num_cpus=1)(process)
        limit = 2 * max(1, workers, int(ray.cluster_resources().get("CPU", 1)))  # bounded, as the local pool
        queue = iter(todo)
        while True:
            pending += [task.remote(s, out, opts) for s in itertools.islice(queue, limit - len(pending))]
            if not pending:
                break
            done, pending = ray.wait(pending, num_returns=1)
            for result in ray.get(done):
                advance(result)
    except BaseException:
        for ref in pending:  # queued and running tasks; a cancelled source has no record, the next run does it
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def report_failure(result: dict) -> None:
    if "failed" in result:
        log.warning(f"curate: {result['source']}: {result['failed']}; not recorded, so the next run tries it again")


def finish(out: Path, sources: list[str]) -> dict:
    records = [out / "sources" / f"{source_id(s)}.json" for s in sources]
    results = [json.loads(r.read_text()) for r in records if r.is_file()]
    failed = [s for s, r in zip(sources, records) if not r.is_file()]
    with atomic_path(out / "pairs.jsonl") as tmp:
        with open(tmp, "w") as f:
            for r in results:
                for record in r["pairs"]:
                    f.write(json.dumps({**record, "shard": r["shard"]}) + "\n")
    overlaps = [p["overlap"] for r in results for p in r["pairs"]]
    rejected = Counter()
    for r in results:
        rejected.update(r["rejected"])
    summary = {"sources": len(results), "candidates": sum(r["candidates"] for r in results),
               "pairs": len(overlaps), "pairs_per_source": {r["source"]: len(r["pairs"]) for r in results},
               "rejected": dict(rejected), "failed": failed,
               "overlap_histogram": np.histogram(overlaps, bins=10, range=(0, 1))[0].tolist()}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    histogram_png(overlaps, out / "overlap_histogram.png")
    return summary


def histogram_png(values: list[float], path: Path, bins: int = 20) -> None:
    """A plain bar chart of the accepted overlaps (PIL only)."""
    from PIL import Image, ImageDraw

    counts = np.histogram(values, bins=bins, range=(0, 1))[0]
    w, h, pad = 420, 220, 30
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    top = max(1, counts.max())
    bw = (w - 2 * pad) / bins
    for i, c in enumerate(counts):
        x0 = pad + i * bw
        draw.rectangle([x0 + 1, h - pad - (h - 2 * pad) * c / top, x0 + bw - 1, h - pad], fill=(70, 110, 180))
    draw.line([pad, h - pad, w - pad, h - pad], fill="black")
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        draw.text((pad + t * (w - 2 * pad) - 8, h - pad + 4), f"{t:.2f}", fill="black")
    draw.text((pad, 6), f"overlap of {len(values)} accepted pairs (max bin {top})", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="png")
