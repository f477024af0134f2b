"""`mimzoo.load`: any supported checkpoint -> a ready backbone (or, with model="pretrainer", the method)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, convert, hub
from .models import ViT

# load() keyword arguments, by what they do
HINTS = {"num_heads", "decoder_num_heads"}  # structure the weights cannot show
CONSTRUCTOR = {"drop_path_rate", "global_pool", "dynamic_img_size"}  # change behaviour, not weights
AFTER = {"img_size", "num_classes"}  # applied to the loaded model (pos-embed resampling, new head)


class IncompatibleWeightsError(ValueError):
    pass


def load(name_or_path: str | os.PathLike, *, model: str = "backbone", format: str | None = None,
         cache_dir: str | None = None, progress: bool = True, **overrides) -> nn.Module:
    """Load a zoo name, a local file or directory, or `hf-hub:org/repo[@revision]`.

    model="backbone" gives a `mimzoo.models.ViT`; model="pretrainer" the method's LightningModule with its
    decoder and heads. Overrides: num_heads / decoder_num_heads (when the weights cannot tell), drop_path_rate,
    global_pool, dynamic_img_size, img_size (resamples the position table), num_classes (0 drops a classifier).
    """
    if model not in ("backbone", "pretrainer"):
        raise ValueError(f"model must be 'backbone' or 'pretrainer', got {model!r}")
    unknown = set(overrides) - HINTS - CONSTRUCTOR - AFTER
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)}; allowed: {sorted(HINTS | CONSTRUCTOR | AFTER)}")
    source = str(name_or_path)
    if source.startswith("hf-hub:"):
        path = _from_hub(source[len("hf-hub:"):], cache_dir)
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
    else:
        path, e = hub.fetch(source, cache_dir=cache_dir, progress=progress)
        format = format or e.get("format")
        # the zoo records head counts, which the weights cannot show
        overrides.setdefault("num_heads", e.get("num_heads"))
        overrides.setdefault("decoder_num_heads", (e.get("decoder") or {}).get("num_heads"))
        overrides = {k: v for k, v in overrides.items() if v is not None}
    config, state_dict = read_converted(path, format=format, **{k: overrides[k] for k in HINTS & set(overrides)})
    if model == "pretrainer":
        from .methods import pretrainer_from_converted

        return pretrainer_from_converted(config, state_dict, **overrides)
    return backbone_from_converted(config, state_dict, **overrides)


def _from_hub(spec: str, cache_dir: str | None) -> Path:
    """hf-hub:org/repo[@rev] -> a local folder holding config.json and model.safetensors."""
    from . import download

    repo, _, revision = spec.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"expected hf-hub:org/repo[@revision], got hf-hub:{spec}")
    files = [download.fetch({"hf": {"repo": repo, "filename": f, "revision": revision or "main"}},
                            cache_dir=cache_dir, name=f"hf-hub:{spec}")
             for f in ("config.json", "model.safetensors")]
    return files[0].parent


def read_converted(path: str | os.PathLike, format: str | None = None, **hints) -> tuple[dict, dict]:
    """(config, state dict in mimzoo names) of a mimzoo folder/file, a Lightning checkpoint or an upstream file."""
    path = Path(path)
    if path.is_dir():
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not (cfg_file.is_file() and weights.is_file()):
            raise FileNotFoundError(f"{path} is not a mimzoo checkpoint folder: expected config.json and "
                                    f"model.safetensors in it")
        config = json.loads(cfg_file.read_text())
        state_dict = checkpoint.read(weights)
        if "backbone" not in config:  # a bare ViT.save_pretrained folder
            return {"format": "mimzoo", "backbone": config}, {f"backbone.{k}": v for k, v in state_dict.items()}
        return config, state_dict
    obj = checkpoint.read(path)
    if isinstance(obj, dict) and "pytorch-lightning_version" in obj:
        return _from_lightning(obj, path)
    sd, meta = convert.unwrap(obj)
    return convert.convert(sd, meta, format=format, **hints)


def _from_lightning(obj: dict, path: Path) -> tuple[dict, dict]:
    info = obj.get("mimzoo")
    if not isinstance(info, dict) or "backbone" not in info:
        raise convert.UnsupportedCheckpointError(
            f"{path} is a Lightning checkpoint that was not written by a mimzoo method (no 'mimzoo' entry with "
            f"the backbone config); load its state_dict yourself or save it from a mimzoo method")
    return {"format": "lightning", **info}, obj["state_dict"]


def backbone_from_converted(config: dict, state_dict: dict, **overrides) -> ViT:
    kwargs = dict(config["backbone"])
    kwargs.update({k: overrides[k] for k in CONSTRUCTOR & set(overrides)})
    vit = ViT(**kwargs)
    weights = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    load_strict(vit, weights, what=config.get("format", "checkpoint"))
    if "img_size" in overrides and overrides["img_size"] != kwargs.get("img_size"):
        vit.set_input_size(img_size=overrides["img_size"])
    if "num_classes" in overrides:
        vit.reset_classifier(overrides["num_classes"])
    return vit.eval()


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
