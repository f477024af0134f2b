"""Upstream checkpoint formats -> mimzoo. One module per format, each a pure `detect(state_dict)` and
`convert(state_dict, meta) -> (config, state_dict)` whose keys are `backbone.*` (a `mimzoo.models.ViT`) and the
method's own parts (`decoder.*`, `momentum.*`)."""
from __future__ import annotations

from typing import Any

import torch

from . import croco, data2vec2, mae, mim_refiner, mimic, semanticmim, siameseim, transformers_vitmae
from .keys import ConversionError

# Most specific first: MIMIC, SiameseIM and timm/MAE share MAE's encoder keys.
FORMATS = {m.NAME: m for m in (semanticmim, transformers_vitmae, data2vec2, mim_refiner, croco, mimic, siameseim, mae)}

__all__ = ["FORMATS", "ConversionError", "UnsupportedCheckpointError", "unwrap", "detect", "convert"]


class UnsupportedCheckpointError(ConversionError):
    pass


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, the rest) of a checkpoint as the upstream trainers save it: {'model': ...} (MAE, CroCo,
    MIMIC, SiameseIM), {'state_dict': ...} (MIM-Refiner, Lightning) or a bare state dict. DDP `module.` is stripped."""
    if not isinstance(obj, dict):
        raise UnsupportedCheckpointError(
            f"the file holds a {type(obj).__name__}, not a state dict; save `model.state_dict()` instead")
    for key in ("model", "state_dict", "module"):
        if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
            sd, meta = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        if not _is_state_dict(obj):
            raise UnsupportedCheckpointError(
                f"no state dict found: top-level keys are {sorted(map(str, obj))[:10]}; expected 'model', "
                f"'state_dict' or parameter names")
        sd, meta = obj, {}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, meta


def _is_state_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and any(isinstance(v, torch.Tensor) for v in d.values())


def detect(sd: dict) -> str:
    for name, module in FORMATS.items():
        if module.detect(sd):
            return name
    raise UnsupportedCheckpointError(
        f"unsupported checkpoint: its keys ({', '.join(list(sd)[:6])}, ...) match none of the supported formats "
        f"({', '.join(FORMATS)}). If it is one of them, pass format=...; mimzoo's own checkpoints are directories "
        f"with config.json + model.safetensors or Lightning .ckpt files.")


def convert(sd: dict, meta: dict | None = None, format: str | None = None, **hints) -> tuple[dict, dict]:
    """Convert an upstream state dict; `hints` are num_heads / decoder_num_heads where shapes cannot tell."""
    name = format or detect(sd)
    if name not in FORMATS:
        raise UnsupportedCheckpointError(f"unknown format {name!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[name].convert(sd, meta or {}, **hints)
