"""Reading and writing weight files safely: no code from a checkpoint ever runs, and nothing is half-written."""
from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

# What official training scripts put beside the weights (MAE/CroCo/SiameseIM save their argparse args; runs
# launched through submitit store paths). Plain containers and tensors need no allow-listing.
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]


class CheckpointReadError(ValueError):
    pass


def read(path: str | os.PathLike) -> Any:
    """Load a .safetensors file or a torch pickle with `weights_only=True` (+ the globals official checkpoints
    need). A pickle that asks for anything else, e.g. a `__reduce__` that would run code, is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
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
        with torch.serialization.safe_globals(SAFE_GLOBALS):
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
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_safetensors(state_dict: dict[str, torch.Tensor], dst: str | os.PathLike, metadata: dict | None = None):
    # safetensors refuses shared storage (tied or EMA copies): give every tensor its own contiguous memory
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
