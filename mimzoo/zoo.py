"""The zoo: `checkpoints.yaml` entries, name resolution and fetching a named checkpoint to a verified local file."""
from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from pathlib import Path

import yaml

from .errors import ConfigError, UnknownNameError

REGISTRY_FILE = Path(__file__).with_name("checkpoints.yaml")


class UnknownModelError(UnknownNameError):
    """A name that is not in the zoo (checkpoints.yaml or MIMZOO_REGISTRY files)."""


def registry() -> dict[str, dict]:
    """The built-in zoo plus any YAML files (same schema) listed in MIMZOO_REGISTRY, which may add private
    checkpoints or point a name at a mirror; later files win."""
    return _registry(os.environ.get("MIMZOO_REGISTRY", ""))


@functools.lru_cache(maxsize=8)
def _registry(extra: str) -> dict[str, dict]:
    models = {}
    for path in [REGISTRY_FILE, *filter(None, extra.split(os.pathsep))]:
        try:
            with open(path) as f:
                models.update(yaml.safe_load(f)["models"])
        except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read the model registry {path}: {e}; it needs a top-level 'models:' "
                              f"mapping") from e
    return models


@functools.lru_cache(maxsize=1)
def families() -> dict[str, dict]:
    """The built-in families (paper, repo, licence, notes), keyed as the entries' `method`."""
    with open(REGISTRY_FILE) as f:
        return yaml.safe_load(f).get("families") or {}


AXES = ("paradigm", "masking", "target", "objective", "architecture")


@functools.lru_cache(maxsize=1)
def taxonomy() -> dict[str, dict]:
    """The MIM survey's axes for every method mimzoo trains (checkpoints.yaml `taxonomy:`), keyed as `method`."""
    with open(REGISTRY_FILE) as f:
        return yaml.safe_load(f).get("taxonomy") or {}


def list_models(pattern: str = "*") -> list[str]:
    """Names in checkpoints.yaml matching a shell-style pattern, sorted."""
    return sorted(n for n in registry() if fnmatch.fnmatch(n, pattern))


def entry(name: str) -> dict:
    """The registry entry of `name` (aliases resolved), with its canonical name under 'name'."""
    models = registry()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} `mimzoo models` lists all names; a local file, a "
                                f"directory or 'hf-hub:org/repo' also works.")
    e = dict(models[name])
    seen = {name}
    while "alias_of" in e:
        target = e["alias_of"]
        if target in seen or target not in models:
            raise UnknownModelError(f"checkpoints.yaml: alias {name!r} points to missing or cyclic {target!r}")
        seen.add(target)
        merged = dict(models[target])
        merged.update({k: v for k, v in e.items() if k != "alias_of"})
        name, e = target, merged
    e["name"] = name
    return e


def fetch(name: str, *, cache_dir: str | None = None, progress: bool = True,
          force: bool = False, verify: bool = False) -> tuple[Path, dict]:
    """Download (or find in the cache) the file of a zoo entry, verified; returns (path, entry). A fresh download
    must be a complete weight file (`checkpoint.check_complete`) before it is cached; `force` downloads again;
    `verify` hashes a cached copy even when its size and mtime are those recorded with its digest."""
    from . import checkpoint, download

    e = entry(name)
    if not e.get("source"):
        raise download.DownloadError(
            f"{name!r} has no public download ({e.get('notes', 'never released upstream')}).")
    path = download.fetch_source(e["source"], sha256=e.get("sha256"), cache_dir=cache_dir, progress=progress,
                                 name=name, validate=checkpoint.check_complete, force=force,
                                 verify=verify)
    return path, e
