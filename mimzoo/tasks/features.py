"""Frozen features of a backbone for a dataset: batched on the device, bf16 on GPU, cached to safetensors.

A cache file records what made it (`features_key`: a digest of the model's weights and config, the pooling, the
precision and a description of the data) in its safetensors metadata, and is only read back for the same key."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from ..checkpoint import write_safetensors
from ..errors import ConfigError
from .pooling import check_pooling, model_input, pooled

FORMAT = 1  # of the cached features; bump when what `extract` computes for the same key changes
KEY = "mimzoo_features_key"  # the safetensors metadata entry holding the key (JSON)
log = logging.getLogger("mimzoo")


def model_digest(vit: torch.nn.Module) -> str:
    """sha256 of what decides a backbone's features: every state-dict tensor (name, dtype, shape, bytes), its
    constructor config, its normalisation and its pooling settings. About 0.2 s for a ViT-B on a CPU."""
    h = hashlib.sha256()
    config = {"class": type(vit).__qualname__, "config": dict(getattr(vit, "_hub_mixin_config", None) or {}),
              "data_config": getattr(vit, "data_config", None), "global_pool": getattr(vit, "global_pool", None),
              "num_prefix_tokens": getattr(vit, "num_prefix_tokens", None)}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(vit.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def features_key(vit, pooling: str, device: str, data=None, digest: str | None = None) -> dict:
    """What a cache file of features must have been made by to be reused: the model (`model_digest`), the pooling,
    the precision (bf16 autocast on CUDA, fp32 elsewhere) and `data`, any JSON value describing the images (which
    files, which split, which transform; `extract` cannot see them in a loader)."""
    return {"format": FORMAT, "model": digest or model_digest(vit), "pooling": pooling,
            "precision": "bf16" if str(device).startswith("cuda") else "fp32",
            "data": json.loads(json.dumps(data, sort_keys=True, default=str))}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def key_difference(stored: dict | None, key: dict) -> str:
    """How the features a stored key describes differ from those of `key`, in words."""
    if not isinstance(stored, dict):
        return "has no record of the model and data that made it (an older mimzoo wrote it)"
    fields = []
    for name in key:
        a, b = stored.get(name), key[name]
        if a != b and isinstance(a, dict) and isinstance(b, dict):
            fields += [f"data {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            fields.append(name)
    return f"holds features of a different {', '.join(fields or ['key'])}"


def read_cache(path: Path, key: dict) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str | None]:
    """((features, labels), None) when `path` holds features of `key`; else (None, why not), why being None for a
    missing file."""
    if not path.is_file():
        return None, None
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get(KEY, "null"))
            if stored != key:
                return None, key_difference(stored, key)
            features, labels = f.get_tensor("features"), f.get_tensor("labels")
    except Exception as e:  # safetensors raises its own error types for a truncated or foreign file
        return None, f"is unreadable ({type(e).__name__}: {str(e)[:200]})"
    if features.ndim != 2 or labels.ndim != 1 or len(features) != len(labels):
        return None, f"is unreadable (features {tuple(features.shape)}, labels {tuple(labels.shape)})"
    return (features, labels), None


def cached_paths(cache: str | Path, key: dict) -> tuple[Path, Path]:
    """The file named, and the one beside it that features of `key` go to when the named one holds others."""
    path = Path(cache)
    return path, path.with_name(f"{path.stem}-{key_digest(key)[:16]}{path.suffix}")


@torch.no_grad()
def extract(vit, loader, pooling: str = "default", device: str | None = None, cache: str | Path | None = None,
            progress: bool = True, data=None, digest: str | None = None,
            devices: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) for every batch {"image": normalised float or uint8, "label"} of `loader`; batches
    emptied by unreadable images (`collate_images`) are skipped and counted.

    With `cache`, a finished extraction is written (atomically) to that .safetensors file with its
    `features_key` in the metadata, and read back only for the same key: pass `data` (e.g. the dataset's name,
    split and transform) so that features of other images are never reused. A file holding another key is
    left alone and the features go to `<stem>-<key digest>.safetensors` beside it; an unreadable one is
    replaced; each case is one log line. `digest`: a precomputed `model_digest(vit)`. devices: extract on this
    many devices of `device`'s kind through Lightning (`lightning_features`; the same features, one process per
    device)."""
    check_pooling(pooling)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = None
    if cache:
        key = features_key(vit, pooling, device, data, digest)
        named, beside = cached_paths(cache, key)
        found, why = read_cache(named, key)
        if found is not None:
            return found
        target = named
        if why is not None and not why.startswith("is unreadable"):  # another model's or data's: keep it
            target = beside
            found, why_beside = read_cache(beside, key)
            if found is not None:
                log.info(f"features cache: {named} {why}; reading the matching ones from {beside.name}")
                return found
            why = why if why_beside is None else f"{why}, and {beside.name} {why_beside}"
            log.warning(f"features cache: not reusing {named}: it {why}; extracting into {beside}")
        elif why is not None:
            log.warning(f"features cache: {named} {why}; extracting again")
    if devices is not None:
        from .lightning_features import extract_on_devices

        features, labels, skipped = extract_on_devices(vit, loader, pooling, devices, device, progress)
        feats, labels = ([features], [labels]) if len(features) else ([], [])
    else:
        feats, labels, skipped = extract_here(vit, loader, pooling, device, progress)
    of = f" of {data['dataset']} ({data.get('split', '?')})" if isinstance(data, dict) and "dataset" in data else ""
    if not feats:
        raise ConfigError(f"no features{of}: the loader gave no readable image ({skipped} unreadable)")
    if skipped:
        log.warning(f"features{of}: skipped {skipped} unreadable image(s); the features cover the other "
                    f"{sum(map(len, labels))}")
    out = torch.cat(feats), torch.cat(labels)
    if target is not None:
        write_safetensors({"features": out[0], "labels": out[1]}, target, metadata={KEY: json.dumps(key)})
    return out


def extract_here(vit, loader, pooling: str, device: str, progress: bool) -> tuple[list, list, int]:
    """Features and labels of each batch of `loader`, in this process, and the number of unreadable images."""
    vit = vit.to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    feats, labels, skipped = [], [], 0
    for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
        skipped += int(batch.get("skipped", 0))
        if len(batch["image"]) == 0:  # every image of the batch was unreadable
            continue
        images = model_input(vit, batch["image"].to(device, non_blocking=True))
        with autocast:
            feats.append(pooled(vit, images, pooling).float().cpu())
        labels.append(batch["label"].cpu())
    return feats, labels, skipped


def check_labels(train_labels: torch.Tensor, test_labels: torch.Tensor, what: str = "the data",
                 names: list[str] | None = None, warn: bool = True) -> None:
    """Refuse labels no probe can score meaningfully: fewer than two training classes (every prediction is then
    right, 100 %), an empty test set, test labels absent from the training split (never predicted right). With
    `warn`, one log line when the test split lacks some training classes (its accuracy covers the others)."""
    name = lambda c: repr(names[c]) if names and 0 <= c < len(names) else str(c)  # noqa: E731
    train = sorted(set(train_labels.flatten().tolist()))
    test = sorted(set(test_labels.flatten().tolist()))
    if len(train) < 2:
        have = f"only class {name(train[0])}" if train else "no samples"
        raise ConfigError(f"{what}: the training split has {have}; a probe needs at least two classes (with one, "
                          f"every prediction is right and the accuracy is 100 %)")
    if not test:
        raise ConfigError(f"{what}: the test split has no samples")
    unseen = [c for c in test if c not in set(train)]
    if unseen:
        raise ConfigError(f"{what}: test class(es) {', '.join(map(name, unseen[:10]))} never occur in the training "
                          f"split, so no probe can predict them")
    lacking = [c for c in train if c not in set(test)]
    if lacking and warn:
        log.warning(f"{what}: the test split lacks {len(lacking)} of the {len(train)} training classes "
                    f"({', '.join(map(name, lacking[:10]))}{', ...' if len(lacking) > 10 else ''}); its accuracy "
                    f"covers the other classes only")
