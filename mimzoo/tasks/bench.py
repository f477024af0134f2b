"""`mimzoo bench`: the same frozen-feature probes (same preprocessing, same seeds) over many checkpoints.

Each (model, probe) gives one row per metric in DIR/bench.json, with what it costs: the feature used, the input
size, the parameter count, GFLOPs per image (torch's flop counter, `mimzoo.flops`) and images/s of feature
extraction on this machine. bench.md (a leaderboard) and bench.png (accuracy against GFLOPs) are made from it.

Resumable: bench.json is rewritten (atomically) after every (model, probe), and each row is keyed by what produced
it (the model's weights digest, the probe's settings, the images); a rerun keeps the rows whose key still holds and
computes the rest. A model that fails to load, or a probe that fails on it, is reported in its row and the others
go on; failed rows are tried again on the next run.
"""
from __future__ import annotations

import copy
import glob
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from .. import __version__, loading, zoo
from ..checkpoint import atomic_path
from ..errors import ConfigError
from ..flops import flop_counter
from . import probe
from .bench_report import write_report
from .features import extract_here, key_digest, model_digest
from .fewshot import LAMBDA, check_shots
from .knn import check_knn
from .linear import check_linear
from .pooling import check_pooling, pooled

FORMAT = 1  # of bench.json; bump when a row's fields or what a key covers change
PROBES = ("knn", "linear", "fewshot")
# each probe's settings as `mimzoo probe` defaults them
DEFAULTS = {
    "knn": {"ks": [20, 200], "temperature": 0.07, "standardize": False, "pooling": "default"},
    "linear": {"epochs": 90, "lr": 6.4, "probe_batch_size": 256, "warmup_epochs": 10, "seed": 0, "pooling": "default"},
    "fewshot": {"shots": [1, 2, 5], "seeds": [0, 1, 2], "lambd": LAMBDA, "preprocess_test": False,
                "pooling": "cls_prenorm"},
}
SPEED_BATCHES = 3  # timed batches (after one warm-up) for images/s
log = logging.getLogger("mimzoo")


def protocols(probes: list[str] | str, **settings) -> dict[str, dict]:
    """{probe: its settings}: the defaults of `mimzoo probe`, with each given setting applied to the probes that
    take it (ks, temperature, standardize | epochs, lr, probe_batch_size, warmup_epochs, seed | shots, seeds,
    lambd, preprocess_test); `pooling` goes to knn and linear, `fewshot_pooling` to fewshot."""
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    unknown = [p for p in names if p not in PROBES]
    if unknown or not names:
        raise ConfigError(f"--probes takes a comma-separated list of {', '.join(PROBES)}; got {','.join(names)!r}")
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if v is not None}
    allowed = set().union(*DEFAULTS.values()) | {"fewshot_pooling"}
    if set(given) - allowed:
        raise ConfigError(f"unknown bench setting(s) {sorted(set(given) - allowed)}; allowed: {sorted(allowed)}")
    out = {}
    for name in dict.fromkeys(names):
        s = copy.deepcopy(DEFAULTS[name])
        for k, v in given.items():
            if (k == "pooling") == (name == "fewshot") and "pooling" in k:  # few-shot reads its own pooling
                continue
            if k.replace("fewshot_", "") in s:
                s[k.replace("fewshot_", "")] = v
        check_settings(name, s)
        out[name] = s
    return out


def check_settings(name: str, s: dict) -> None:
    check_pooling(s["pooling"])
    if name == "knn":
        check_knn(s["ks"], s["temperature"])
    elif name == "linear":
        check_linear(s["epochs"], s["probe_batch_size"])
    else:
        check_shots(s["shots"], s["seeds"])


def score(name: str, features, settings: dict) -> dict:
    """The probe's metrics on (train features, train labels, test features, test labels), through the functions
    `mimzoo probe` calls."""
    s = settings
    if name == "knn":
        return probe.knn_scores(features, s["ks"], s["temperature"], s["standardize"])
    if name == "linear":
        return probe.linear_scores(features, s["epochs"], s["lr"], s["probe_batch_size"], s["warmup_epochs"],
                                   s["seed"])
    return probe.fewshot_scores(features, s["shots"], s["seeds"], s["lambd"], s["preprocess_test"])


def metric_rows(name: str, result: dict) -> list[dict]:
    """One {"metric", "value"[, "std", "runs"]} per reported number of a probe's result."""
    if name == "knn":
        return [{"metric": k, "value": v} for k, v in result.items()]
    if name == "linear":
        return [{"metric": k, "value": result[k]} for k in ("linear_top1", "linear_top5")]
    return [{"metric": k, "value": v, "std": result[k.replace("_mean", "_std")],
             "runs": result[k.replace("_mean", "_runs")]} for k, v in result.items() if k.endswith("_mean")]


def resolve_models(specs: list[str]) -> list[str]:
    """Zoo names, shell patterns over zoo names ('mae_*', aliases left out) or over files ('runs/*/model'),
    files, folders and hf-hub: names, in the order given, each once. A pattern that matches nothing is an error;
    a name that does not load is reported in its row."""
    out = []
    for spec in specs:
        if any(c in spec for c in "*?[") and not Path(spec).exists():
            names = [n for n in zoo.list_models(spec) if "alias_of" not in zoo.registry()[n]]
            files = names or sorted(glob.glob(spec))
            if not files:
                raise ConfigError(f"--models {spec!r} matches no zoo name and no file (`mimzoo models` lists the "
                                  f"names)")
            out += files
        else:
            out.append(spec)
    return list(dict.fromkeys(out))


@dataclass
class Loaded:
    """A benched model: its backbone, what it is, and what a row records about it."""
    vit: torch.nn.Module
    name: str
    method: str | None
    digest: str
    facts: dict = field(default_factory=dict)  # {pooling: params, gflops, images/s}, measured when a probe runs


def load_model(spec: str, size: int | None) -> Loaded:
    converted = loading.read(spec, progress=False)
    vit = loading.backbone(converted, num_classes=0, img_size=size).eval()
    entry = zoo.entry(spec) if spec in zoo.registry() and not Path(spec).exists() else {}  # as `loading.read` says
    method = entry.get("method") or converted.config.get("method") or \
        (converted.config.get("provenance") or {}).get("method")
    return Loaded(vit, entry.get("name", spec), method, model_digest(vit))


def feature_name(vit, pooling: str) -> str:
    """The pooling as a row reports it: 'default' with what the model's own forward pools."""
    if pooling == "default":
        pool = getattr(vit, "global_pool", None)
        return f"default ({'cls' if pool == 'token' else pool or 'model forward'})"
    return pooling


def usable_pooling(vit, pooling: str) -> str:
    """A cls-token feature falls back to the mean of the patch tokens on backbones without one (CroCo), as their
    papers probe them; the row names the feature used."""
    if pooling in ("cls", "cls_prenorm", "cls_avg", "cls_last4", "cls_avg_last4", "proxies") and \
            not vit.num_prefix_tokens:
        return "avg"
    return pooling


@torch.no_grad()
def measure(vit, loader, pooling: str, device: str) -> dict:
    """Parameters, GFLOPs per image (one image through the feature's forward) and images/s of feature extraction
    (the loader's first batch, one warm-up then SPEED_BATCHES timed, on `device`)."""
    size = vit.data_config["input_size"][-1]
    counter = flop_counter()
    with counter:
        pooled(vit.cpu(), torch.zeros(1, 3, size, size), pooling)
    batch = next(iter(loader))
    extract_here(vit, [batch], pooling, device, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    extract_here(vit, [batch] * SPEED_BATCHES, pooling, device, progress=False)  # ends in .cpu(): synchronised
    seconds = time.perf_counter() - start
    return {"params": sum(p.numel() for p in vit.parameters()), "gflops": round(counter.get_total_flops() / 1e9, 3),
            "images_per_s": round(len(batch["image"]) * SPEED_BATCHES / seconds, 1), "speed_device": device}


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier bench.json in the out folder ([] when there is none)."""
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a bench.json ({e}); move it away or pick another --out") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise ConfigError(f"{path} is not a bench.json of this mimzoo (format {FORMAT}); move it away or pick "
                          f"another --out")
    return doc["rows"]


def write_rows(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "mimzoo": __version__, "rows": rows}, indent=1) + "\n")


def replaced(rows: list[dict], new: list[dict], path: Path) -> list[dict]:
    """`rows` with the rows of `new`'s slots replaced by `new`, written to `path` (atomically)."""
    mine = {slot(r) for r in new}
    rows = [r for r in rows if slot(r) not in mine] + new
    write_rows(path, rows)
    return rows


def slot(row: dict) -> tuple:
    """What a row answers (this model name at this asked input size, this probe and settings, this dataset),
    whatever the weights: a newer row for the same slot replaces it."""
    return row["model"], row.get("size_asked"), row["probe"], json.dumps(row.get("settings"), sort_keys=True), \
        row.get("data")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:500]


def bench(models: list[str], data: str, probes: list[str] | str, out: str | Path, *, size: int | None = None,
          batch_size: int = 128, workers: int = 4, device: str | None = None, devices: int | None = None,
          progress: bool = True, report: bool = True, **settings) -> dict:
    """Run the probes over the models on `data` ("digits" or an ImageNet-style folder) into `out`.

    Args:
        models: zoo names, patterns ('mae_*'), files, folders, hf-hub: names (`resolve_models`).
        probes: "knn,linear,fewshot" or a list; `settings` change their defaults (`protocols`).
        size: input size of every model (position tables resampled); default each model's own.
        device: where features are extracted (default cuda when available); devices: this many devices of that
            kind through Lightning (one process each).
        report: write bench.md and bench.png after the rows.
    Returns: {"rows": every row of bench.json, "computed": (model, probe) pairs run now, "reused": kept from an
    earlier run, "failed": failed now}.
    """
    wanted = protocols(probes, **settings)
    probe.check_loading(batch_size, workers)
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"size must be a positive integer; got {size!r}")
    if devices is not None and (not isinstance(devices, int) or devices < 1):
        raise ConfigError(f"devices must be a positive integer; got {devices!r}")
    specs = resolve_models(models)
    splits = probe.check_data(data)  # a wrong folder is the user's, not one model's: it stops the bench
    data_name = "digits" if data == "digits" else str(Path(data).resolve())
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    path = out / "bench.json"
    rows = read_rows(path)
    summary = {"computed": [], "reused": [], "failed": []}
    bar = tqdm(specs, desc="bench", unit="model", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(Path(spec).name if Path(spec).exists() else spec)
        rows = bench_model(spec, wanted, data, data_name, splits, rows, path, summary, size=size,
                           batch_size=batch_size, workers=workers, device=device, devices=devices, progress=progress)
    if report:
        write_report(rows, out)
    return {"rows": rows, **summary}


def bench_model(spec: str, wanted: dict, data: str, data_name: str, splits, rows: list[dict], path: Path,
                summary: dict, *, size, batch_size, workers, device, devices, progress) -> list[dict]:
    """Run (or keep) every probe of one model; returns the updated rows, written after each probe."""
    base = {"model": spec, "size_asked": size, "data": data_name}
    try:
        model = load_model(spec, size)
    except Exception as e:  # a bad file, an unknown name, a failed download: this model's rows say why
        error = one_line(e)
        log.warning(f"bench: {spec} did not load ({error}); going on with the others")
        for name, settings in wanted.items():
            rows = replaced(rows, [{**base, "name": spec, "probe": name, "settings": settings, "status": "failed",
                             "error": f"load: {error}", "finished": now()}], path)
            summary["failed"].append((spec, name))
        return rows
    vit_size = model.vit.data_config["input_size"][-1]
    described = probe.describe(data, vit_size, splits, fingerprint=True)
    for name, settings in wanted.items():
        pooling = usable_pooling(model.vit, settings["pooling"])
        key = key_digest({"format": FORMAT, "model": model.digest, "probe": name, "settings": settings,
                          "feature": pooling, "data": described})
        mine = [r for r in rows if slot(r) == (spec, size, name, json.dumps(settings, sort_keys=True), data_name)]
        if mine and all(r.get("status") == "ok" and r.get("key") == key for r in mine):
            summary["reused"].append((spec, name))
            continue
        start = time.perf_counter()
        try:
            features = probe.feature_sets(model.vit, data, [pooling], batch_size, workers,
                                          cache_dir=str(path.parent / "features" / model.digest[:16]),
                                          progress=progress, device=device, devices=devices, digest=model.digest)
            result = score(name, features[pooling], settings)
            if pooling not in model.facts:
                loader = probe.data_loaders(data, vit_size, batch_size, 0, splits)[1]
                model.facts[pooling] = measure(model.vit, loader, pooling, device)
        except Exception as e:  # one probe failing on one model (memory, a feature it lacks) leaves the rest
            error = one_line(e)
            log.warning(f"bench: {name} on {spec} failed ({error}); going on")
            rows = replaced(rows, [{**base, "name": model.name, "probe": name, "settings": settings, "status": "failed",
                             "error": error, "finished": now()}], path)
            summary["failed"].append((spec, name))
            continue
        common = {"feature": feature_name(model.vit, pooling), "image_size": vit_size, **model.facts[pooling],
                  "devices": devices or 1, "method": model.method, "settings": settings, "data": data_name,
                  "model_digest": model.digest, "key": key, "seconds": round(time.perf_counter() - start, 1),
                  "finished": now(), "mimzoo": __version__, "status": "ok"}
        rows = replaced(rows, [{"model": spec, "size_asked": size, "name": model.name, "probe": name, **m, **common}
                               for m in metric_rows(name, result)], path)
        summary["computed"].append((spec, name))
    return rows
