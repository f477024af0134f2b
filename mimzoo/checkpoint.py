"""Reading and writing weight files safely: no code from a checkpoint ever runs, and nothing is half-written."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, Error, NotFoundError

# What official training scripts put beside the weights (MAE/CroCo/SiameseIM save their argparse args; runs
# launched through submitit store paths). Plain containers and tensors need no allow-listing.
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]


class InertRecord:
    """Stands in for a training-log class of another library (mmengine's `HistoryBuffer`, ...): the unpickler
    builds one instead, so nothing of that library is imported or run; its pickled state is kept as plain data."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<inert stand-in for {type(self).__qualname__}>"


class _InertAttribute(str):
    """What `getattr(<stand-in class>, name)` gives in a pickle: the name, as plain data."""


def _inert_getattr(obj: Any, name: str, *default: Any) -> Any:
    """mmengine pickles `getattr(HistoryBuffer, '<statistic>')`: answered for stand-ins only (never a real
    getattr, which could reach any attribute of an allowed object)."""
    if isinstance(obj, type) and issubclass(obj, InertRecord):
        return _InertAttribute(name)
    raise pickle.UnpicklingError(f"refused getattr({type(obj).__name__}, {name!r}) in a checkpoint")


def _numpy_globals() -> list:
    """numpy arrays and scalars as torch's weights-only unpickler can rebuild them (mmengine logs hold them)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [np.ndarray, np.dtype, *dtypes, core.multiarray.scalar,
            (reconstruct, "numpy._core.multiarray._reconstruct"), (reconstruct, "numpy.core.multiarray._reconstruct"),
            (core.multiarray.scalar, "numpy._core.multiarray.scalar"),
            (core.multiarray.scalar, "numpy.core.multiarray.scalar")]


# mmengine Runner checkpoints (SemanticMIM and other OpenMMLab trainers) put log objects beside the weights;
# each maps to an inert stand-in class of the same name, so `torch.load(weights_only=True)` reads the file.
MMENGINE_CLASSES = ["mmengine.logging.history_buffer.HistoryBuffer", "mmengine.logging.message_hub.MessageHub",
                    "mmengine.config.config.ConfigDict", "mmengine.config.config.Config"]
STAND_INS = [(type(name.rpartition(".")[2], (InertRecord,), {"__module__": __name__}), name)
             for name in MMENGINE_CLASSES]


def safe_globals() -> list:
    return [*SAFE_GLOBALS, *STAND_INS, (_inert_getattr, "builtins.getattr"), (_inert_getattr, "__builtin__.getattr"),
            *_numpy_globals()]


class CheckpointReadError(Error, ValueError):
    """A file that is not a readable checkpoint (empty, truncated, another kind of file, or an unsafe pickle)."""


class IncompatibleWeightsError(Error, ValueError):
    """Weights whose keys or shapes do not fit the model they are loaded into."""


def read(path: str | os.PathLike) -> Any:
    """Load a .safetensors file or a torch pickle with `weights_only=True` (+ the globals official checkpoints
    need). A pickle that asks for anything else, e.g. a `__reduce__` that would run code, is refused."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"no checkpoint file at {path}")
    if path.stat().st_size == 0:
        raise CheckpointReadError(f"{path} is empty (0 bytes): an interrupted download or copy; fetch it again")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointReadError(f"{path} is not a valid safetensors file ({e}); it may be truncated") from e
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch zip archive, or a legacy pickle
        raise CheckpointReadError(f"{path} is not a readable PyTorch checkpoint (it is neither a torch zip archive "
                                  f"nor a pickle); check that the file is the checkpoint you meant")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e) or "truncated" in str(e).lower():
            raise CheckpointReadError(f"{path} is not a readable PyTorch checkpoint ({e}); it may be truncated") from e
        raise CheckpointReadError(
            f"refused to load {path}: it needs Python objects that a weights-only load does not allow "
            f"({str(e).splitlines()[-1][:300]}). mimzoo never runs code from a checkpoint. If you trust the file, "
            f"load it yourself with torch.load(weights_only=False), then pass the state dict to "
            f"mimzoo.convert.convert.") from e
    except Exception as e:  # torch raises RuntimeError/EOFError/IndexError/... on damaged archives
        raise CheckpointReadError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); it may be truncated "
            f"or another kind of file") from e


def check_complete(path: str | os.PathLike) -> None:
    """Raise CheckpointReadError unless `path` is a whole weight file: a safetensors file whose tensors all fit,
    a torch zip archive with its central directory and pickle, or a legacy pickle that loads. Cheap for the
    first two (headers only): it runs on every fresh download, where no published digest can vouch for the bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8 and int.from_bytes(head, "little") < min(size, 100 << 20):  # safetensors header length
            header = f.read(int.from_bytes(head, "little"))
            if header[:1] == b"{":
                try:
                    tensors = [v for k, v in json.loads(header).items() if k != "__metadata__"]
                    end = max((v["data_offsets"][1] for v in tensors), default=0)
                except (ValueError, KeyError, TypeError, IndexError) as e:
                    raise CheckpointReadError(f"{path} has a damaged safetensors header ({e})") from e
                if size < 8 + len(header) + end:
                    raise CheckpointReadError(f"{path} is truncated: {size} bytes, its safetensors header "
                                              f"describes {8 + len(header) + end}")
                return
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointReadError(f"{path} is a truncated or damaged torch archive ({e})") from e
        if not any(n.endswith("data.pkl") for n in names):
            raise CheckpointReadError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
        return
    if head[:1] == b"\x80":
        read(path)  # a legacy pickle has no index to check: load it (weights only)
        return
    shown = head.decode("ascii", "replace") if head.isascii() else repr(head)
    raise CheckpointReadError(f"{path} is not a weight file (it starts with {shown!r}): neither safetensors, a "
                              f"torch archive nor a pickle; an HTML or error page, or another kind of file")


def check_config_file(path: str | os.PathLike) -> None:
    """Raise CheckpointReadError unless `path` holds a JSON object (a folder's config.json)."""
    try:
        ok = isinstance(json.loads(Path(path).read_text()), dict)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointReadError(f"{path} is not a JSON config ({e})") from e
    if not ok:
        raise CheckpointReadError(f"{path} is JSON but not an object of settings")


@contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dst`, renamed onto it only if the block finishes: a killed process leaves
    either the old file or the new one, never half of one."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; the result gets the mode any new file of this user gets
        os.chmod(tmp, 0o666 & ~current_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes reach the disk before the name does: a crash leaves old or new, whole
        finally:
            os.close(fd)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_leftovers(folder: str | os.PathLike, names: str = "*") -> list[Path]:
    """Remove the temporary files `atomic_path` leaves in `folder` for targets matching `names` when its process is
    killed with -9 (nothing else can clean up); only safe when no other process is writing there. Returns them."""
    left = list(Path(folder).glob(f".{names}.*.tmp"))
    for p in left:
        p.unlink(missing_ok=True)
    return left


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask must set it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_safetensors(state_dict: dict[str, torch.Tensor], dst: str | os.PathLike, metadata: dict | None = None):
    # safetensors refuses shared storage (tied or EMA copies): give every tensor its own contiguous memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def check_finite(state_dict: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise IncompatibleWeightsError naming every floating tensor that holds NaN or inf (a run that diverged
    before it was saved): such weights load fine and then give NaN for every input."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise IncompatibleWeightsError(f"{what} holds non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                                       f"{shown}; the run that saved it diverged: use an earlier checkpoint")


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """load_state_dict(strict=True) with errors that name every missing/unexpected key and every shape clash."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:10]))
    if problems:
        raise IncompatibleWeightsError(
            f"the {what} weights do not fit {type(module).__name__}: " + " | ".join(problems)
            + ". Check that the checkpoint and the requested architecture/overrides match.")
    module.load_state_dict(state_dict, strict=True)


def part(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix.` with the prefix removed (`part(sd, "backbone")` -> the ViT's own keys)."""
    start = prefix + "."
    return {k[len(start):]: v for k, v in state_dict.items() if k.startswith(start)}


# -- the mimzoo folder format ---------------------------------------------------------------------------------------
# One writer and one reader for `mimzoo convert`, `ViT.save_pretrained` and `Method.save_pretrained`; the schema is
# docs/loading.md "The folder format". config.json: {"format": "mimzoo", "backbone": ViT kwargs, + the other parts'
# configs and, for methods, "method" / "hyper_parameters"}; model.safetensors: "backbone.*" and each part's tensors.
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def write_folder(folder: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """config.json + model.safetensors (huggingface_hub's layout), each written atomically; returns the folder."""
    if "backbone" not in config:
        raise ConfigError("a mimzoo folder's config needs the 'backbone' ViT config")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(state_dict, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps({**config, "format": "mimzoo"}, indent=2, default=_json_default))
    return folder


def read_config_file(path: str | os.PathLike) -> dict:
    """A folder's config.json as a dict; CheckpointReadError for anything that is not a JSON object."""
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointReadError(f"{path} is not valid JSON ({e}); it may be truncated") from e
    if not isinstance(config, dict):
        raise CheckpointReadError(f"{path} holds a JSON {type(config).__name__}, not an object")
    return config


def read_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of a mimzoo folder. Folders written before the format had a "backbone" entry (a bare
    ViT config and un-prefixed keys) are read as a backbone."""
    folder = Path(folder)
    cfg_file, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not (cfg_file.is_file() and weights.is_file()):
        raise NotFoundError(f"{folder} is not a mimzoo checkpoint folder: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
                            f"in it")
    config = read_config_file(cfg_file)
    state_dict = read(weights)
    if "backbone" not in config:
        return ({"format": "mimzoo", "contents": "encoder", "backbone": config},
                {f"backbone.{k}": v for k, v in state_dict.items()})
    return config, state_dict


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
