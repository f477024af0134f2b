"""One dispatcher for checkpoint folders: a folder is recognised by its layout (docs/loading.md, "Folder layouts").

- mimzoo: config.json with a "backbone" entry (or a bare ViT config, older folders) + model.safetensors; as saved.
- timm Hub: config.json with "architecture" (+ "model_args", "pretrained_cfg") + model.safetensors or
  pytorch_model.bin; the ViT timm builds for that architecture, `pretrained_cfg` mean, std, input size, crop and
  interpolation as `data_config`.
- transformers: config.json with "model_type" / "architectures" + weights; ViTMAE (`convert.transformers_vitmae`),
  its config's facts honoured.
- bare weights: model.safetensors or pytorch_model.bin and no config.json; converted by its keys, as a file is.

Anything else is an error naming what the folder holds and the layouts accepted.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from . import checkpoint, convert
from .errors import ConfigError, NotFoundError
from .models.vit import ViT

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
LAYOUTS = ("mimzoo (config.json with 'backbone' + model.safetensors)",
           "timm Hub (config.json with 'architecture' + model.safetensors or pytorch_model.bin)",
           "transformers (config.json with 'model_type' + model.safetensors or pytorch_model.bin)",
           "bare weights (model.safetensors or pytorch_model.bin alone)")
VIT_ARGS = set(inspect.signature(ViT.__init__).parameters) - {"self"}


class FolderLayoutError(NotFoundError):
    pass


def layout(folder: Path, config: dict | None) -> str:
    """'mimzoo', 'timm', 'transformers' or 'bare' (raises FolderLayoutError for anything else)."""
    weights = [f for f in WEIGHTS if (folder / f).is_file()]
    if config is None:
        if weights:
            return "bare"
    elif "backbone" in config or (config and set(config) <= VIT_ARGS):
        return "mimzoo"
    elif "architecture" in config and weights:
        return "timm"
    elif ("model_type" in config or "architectures" in config) and weights:
        return "transformers"
    found = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
    keys = f"; config.json keys: {', '.join(sorted(config)[:12])}" if config else ""
    raise FolderLayoutError(f"{folder} is not a checkpoint folder mimzoo knows: it holds "
                            f"{', '.join(found) or 'nothing'}{keys}. Accepted layouts: {'; '.join(LAYOUTS)}")


def read_config(folder: Path) -> dict | None:
    path = folder / checkpoint.CONFIG_FILE
    return checkpoint.read_config_file(path) if path.is_file() else None


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's state dict: model.safetensors, else pytorch_model.bin (read weights-only)."""
    for name in WEIGHTS:
        if (folder / name).is_file():
            sd, _ = convert.unwrap(checkpoint.read(folder / name))
            return sd
    raise NotFoundError(f"{folder} holds no weights ({' or '.join(WEIGHTS)})")


def read_folder(folder: str | Path, format: str | None = None, **hints) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict in mimzoo names) of a checkpoint folder in any accepted layout."""
    folder = Path(folder)
    config = read_config(folder)
    kind = layout(folder, config)
    if kind == "mimzoo":
        return checkpoint.read_folder(folder)
    sd = weights_of(folder)
    if kind == "timm":
        return from_timm(config, sd, folder)
    if kind == "transformers":
        return convert.convert(sd, {"hf_config": config}, format=format or convert.transformers_vitmae.NAME,
                               **hints)
    return convert.convert(sd, {}, format=format, **hints)


# -- timm ---------------------------------------------------------------------------------------------------------
def from_timm(config: dict, sd: dict[str, torch.Tensor], folder: Path) -> tuple[dict, dict]:
    """A timm Hub folder: the architecture timm builds (on the meta device, no weights) gives the ViT config; the
    state dict is timm's, whose keys mimzoo's ViT shares."""
    backbone = timm_vit_config(config, str(folder))
    vit = ViT(**{**backbone, "pos_embed": "learn"})  # on the CPU: only its keys are compared
    own = set(vit.state_dict())
    unknown, missing = sorted(set(sd) - own), sorted(own - set(sd))
    if unknown or missing:
        raise convert.ConversionError(f"{folder}: the weights do not fit timm's {config['architecture']} "
                                      f"(unexpected {unknown[:6]}, missing {missing[:6]})")
    return {"format": "timm", "contents": "finetuned" if backbone["num_classes"] else "encoder",
            "method": "finetune" if backbone["num_classes"] else None, "backbone": backbone,
            "source_config": {k: config[k] for k in ("architecture", "pretrained_cfg") if k in config}}, {
        f"backbone.{k}": v for k, v in sd.items()}


def timm_vit_config(config: dict, what: str) -> dict:
    """mimzoo ViT arguments of a timm Hub config.json (`architecture`, `model_args`, `pretrained_cfg`, `num_classes`,
    `global_pool`), read off the module timm builds for it; a model mimzoo's ViT cannot hold is an error."""
    import timm
    from timm.layers import LayerScale, Mlp
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    arch = config["architecture"].split(".")[0]
    kwargs = dict(config.get("model_args") or {})
    for key in ("num_classes", "global_pool"):
        if key in config:
            kwargs.setdefault(key, config[key])
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs)
    except (RuntimeError, KeyError, TypeError) as e:  # an unknown name or argument
        raise ConfigError(f"{what}: timm cannot build architecture {arch!r} ({e})") from e
    blk = model.blocks[0] if isinstance(model, VisionTransformer) else None
    why = None
    if blk is None:
        why = f"{type(model).__name__} is not a VisionTransformer"
    elif type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
        why = f"its blocks are {type(blk).__name__} / {type(blk.attn).__name__} / {type(blk.mlp).__name__}"
    elif not isinstance(blk.attn.q_norm, nn.Identity) or not isinstance(model.norm_pre, nn.Identity):
        why = "it has qk-norm or a pre-norm"
    elif model.global_pool not in ("token", "avg", ""):
        why = f"its pooling is {model.global_pool!r}"
    if why:
        raise ConfigError(f"{what}: timm's {arch} is not a plain ViT that mimzoo's backbone holds ({why}); load it "
                          f"with timm.create_model")
    cfg = config.get("pretrained_cfg") or {}
    size = tuple(model.patch_embed.img_size)
    if size[0] != size[1]:
        raise ConfigError(f"{what}: non-square input {size} is not supported")
    ls = blk.ls1
    return {
        "img_size": size[0], "patch_size": model.patch_embed.patch_size[0],
        "in_chans": model.patch_embed.proj.in_channels,
        "embed_dim": model.embed_dim, "depth": len(model.blocks), "num_heads": blk.attn.num_heads,
        "mlp_ratio": blk.mlp.fc1.out_features / model.embed_dim, "qkv_bias": blk.attn.qkv.bias is not None,
        "class_token": model.cls_token is not None, "reg_tokens": model.num_reg_tokens, "pos_embed": "learn",
        "pos_embed_prefix": not model.no_embed_class, "final_norm": not isinstance(model.norm, nn.Identity),
        "fc_norm": not isinstance(model.fc_norm, nn.Identity), "global_pool": model.global_pool,
        "num_classes": model.num_classes, "norm_eps": blk.norm1.eps,
        "init_values": 1.0 if isinstance(ls, LayerScale) else None,  # any value: the weights hold gamma
        "dynamic_img_size": bool(getattr(model, "dynamic_img_size", False)),
        **{k: list(cfg[k]) for k in ("mean", "std") if cfg.get(k)},
        **{k: cfg[k] for k in ("crop_pct", "interpolation") if cfg.get(k)},
    }
