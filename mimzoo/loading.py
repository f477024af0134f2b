"""The loading layer: any supported checkpoint -> `Converted` (config + state dict in mimzoo's names), and the one
place a backbone comes from (`backbone_for`: weights, or an architecture at random init).

Sources: a zoo name (checkpoints.yaml; its recorded facts fill what the file does not say), a local upstream file
(format detected from the keys), a mimzoo folder, a Lightning checkpoint written by a mimzoo method, or
`hf-hub:org/repo[@revision]`. Nothing downloads unless the source names a download.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, convert, folders, zoo
from .errors import ConfigError
from .models import ViT, arch_config

# arguments of a backbone, by what they do
HINTS = {"num_heads", "decoder_num_heads"}  # structure the weights cannot show
BEHAVIOUR = {"drop_path_rate", "global_pool", "dynamic_img_size", "mean", "std", "freeze_patch_embed"}  # not weights
AFTER = {"img_size", "num_classes"}  # applied to the loaded model: position table resampled, classifier replaced
FILE_OPTIONS = {"pretraining_norm"}  # another reading of the file: its pretraining final norm as the backbone's norm

# what a zoo entry records that changes behaviour and that the file itself may not say
ZOO_TARGETS = {"norm_pix": True, "pixel": False, "pixel+gan": False}  # -> norm_pix_loss
ZOO_POOLING = {"cls": "token", "avg": "avg"}  # -> the backbone's global_pool (the feature the paper probes)


@dataclass
class Converted:
    """A checkpoint in mimzoo's names: `config` (see docs/loading.md "The folder format") and a state dict whose
    keys start with the part they belong to (`backbone.`, `decoder.`, ...); `source` is what the user named."""

    config: dict
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    source: str = "checkpoint"

    def parts(self) -> list[str]:
        """The top-level parts the file holds tensors for, in order."""
        return list(dict.fromkeys(k.split(".", 1)[0] for k in self.state_dict))

    def part(self, name: str) -> dict[str, torch.Tensor]:
        return checkpoint.part(self.state_dict, name)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        """The backbone's tensors: the part the config names as the evaluated encoder (`backbone_part`, e.g.
        MIM-Refiner's EMA), else `backbone`."""
        return self.part(self.config.get("backbone_part") or "backbone")

    def fact(self, name: str):
        """A value the file records (an upstream converter's field, or a mimzoo method's saved hyper-parameter);
        None when it says nothing."""
        if self.config.get(name) is not None:
            return self.config[name]
        return (self.config.get("hyper_parameters") or {}).get(name)


def read(name_or_path: str | os.PathLike | Converted, *, format: str | None = None, cache_dir: str | None = None,
         progress: bool = True, num_heads: int | None = None, decoder_num_heads: int | None = None) -> Converted:
    """Resolve and convert: a Converted passes through; `hf-hub:`, an existing path, else a zoo name."""
    if isinstance(name_or_path, Converted):
        return name_or_path
    source = str(name_or_path)
    hints = {"num_heads": num_heads, "decoder_num_heads": decoder_num_heads}
    entry = None
    if source.startswith("hf-hub:"):
        path = hub_folder(source[len("hf-hub:"):], cache_dir)
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
    else:
        path, entry = zoo.fetch(source, cache_dir=cache_dir, progress=progress)
        format = format or entry.get("format")
        # the zoo records head counts, which the weights cannot show
        hints["num_heads"] = hints["num_heads"] or entry.get("num_heads")
        hints["decoder_num_heads"] = hints["decoder_num_heads"] or (entry.get("decoder") or {}).get("num_heads")
    try:
        config, state_dict = read_file(path, format=format, **{k: v for k, v in hints.items() if v})
    except checkpoint.CheckpointReadError as e:
        if path == Path(source).expanduser():
            raise
        # a downloaded copy: say which file it is and how to replace it
        raise checkpoint.CheckpointReadError(f"{e} -- it is the cached download of {source} ({path}); run "
                                             f"`mimzoo download {source} --force` to fetch it again") from e
    checkpoint.check_finite(state_dict, str(path))
    if entry is not None:
        config = with_zoo_facts(config, entry)
    return Converted(config, state_dict, source)


def as_hub_repo(name_or_path):
    """`org/repo[@revision]` that is neither a local path nor a zoo name -> `hf-hub:org/repo[@revision]`; anything
    else unchanged."""
    text = str(name_or_path)
    if (isinstance(name_or_path, str) and re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", text)
            and not Path(text).expanduser().exists() and text not in zoo.registry()):
        return f"hf-hub:{text}"
    return name_or_path


def hub_folder(spec: str, cache_dir: str | None = None, force: bool = False, verify: bool = False) -> Path:
    """hf-hub:org/repo[@rev] -> a local folder holding its config.json and weights: model.safetensors, or
    pytorch_model.bin where a repo has only that (older transformers uploads). mimzoo, timm and transformers
    repos all have this shape (see `mimzoo.folders`)."""
    from huggingface_hub.errors import EntryNotFoundError

    from . import download

    repo, _, revision = spec.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ConfigError(f"expected hf-hub:org/repo[@revision], got hf-hub:{spec}")

    def fetch(filename: str, check) -> Path:
        return download.fetch_source({"hf": {"repo": repo, "filename": filename, "revision": revision or "main"}},
                                     cache_dir=cache_dir, name=f"hf-hub:{spec}", validate=check, force=force,
                                     verify=verify)

    config = fetch(checkpoint.CONFIG_FILE, checkpoint.check_config_file)
    try:
        fetch(folders.WEIGHTS[0], checkpoint.check_complete)
    except download.DownloadError as e:
        if not isinstance(e.__cause__, EntryNotFoundError):
            raise
        fetch(folders.WEIGHTS[1], checkpoint.check_complete)  # its own not-found error names the repo
    return config.parent


def read_file(path: str | os.PathLike, format: str | None = None, **hints) -> tuple[dict, dict]:
    """(config, state dict in mimzoo names) of a mimzoo folder, a Lightning checkpoint or an upstream file."""
    path = Path(path)
    if path.is_dir():
        return folders.read_folder(path, format=format, **hints)
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


def with_zoo_facts(config: dict, entry: dict) -> dict:
    """The zoo entry's facts where the file says nothing: `targets` -> norm_pix_loss, `pooling` -> the backbone's
    pooled feature, `mean`/`std` -> its normalisation. The file's own values always win over the zoo's."""
    config = {**config, "zoo": entry["name"], "backbone": dict(config["backbone"])}
    if config.get("norm_pix_loss") is None and entry.get("targets") in ZOO_TARGETS:
        config["norm_pix_loss"] = ZOO_TARGETS[entry["targets"]]
    backbone = config["backbone"]
    if entry.get("pooling") in ZOO_POOLING and not backbone.get("num_classes"):  # a classifier pools as it was trained
        pool = ZOO_POOLING[entry["pooling"]]
        backbone["global_pool"] = pool if backbone.get("class_token", True) or pool == "avg" else "avg"
    for key in ("mean", "std"):
        if entry.get(key):
            backbone[key] = list(entry[key])
    return config


# -- backbones ------------------------------------------------------------------------------------------------------
def backbone_config(backbone: str | dict, backbone_kwargs: dict | None = None) -> dict:
    """ViT kwargs of an architecture name (timm-style, `vit_base_patch16`) or a config dict, plus overrides."""
    if isinstance(backbone, dict):
        return {**backbone, **(backbone_kwargs or {})}
    if not isinstance(backbone, str):
        raise ConfigError(f"backbone must be an architecture name or a ViT config dict, got {backbone!r}")
    try:
        return {**arch_config(backbone), **(backbone_kwargs or {})}
    except ValueError:
        if backbone in zoo.registry() or Path(backbone).exists() or backbone.startswith("hf-hub:"):
            raise ConfigError(f"backbone={backbone!r} names a checkpoint, not an architecture: pass it as "
                              f"weights={backbone!r} (the architecture then comes from the file)") from None
        raise


def build(config: dict, state_dict: dict[str, torch.Tensor] | None = None, *, what: str = "checkpoint",
          **overrides) -> ViT:
    """A ViT from its config (+ `BEHAVIOUR` overrides), strictly loaded with `state_dict` (ViT keys) when given,
    then `img_size` (resampled position table / rebuilt RoPE) and `num_classes` (a new classifier) applied."""
    if overrides.pop("pretraining_norm", False):
        raise ConfigError("pretraining_norm=True takes the norm from a pretraining file: pass weights=<the file>")
    unknown = set(overrides) - BEHAVIOUR - AFTER
    if unknown:
        raise ConfigError(f"unknown backbone override(s) {sorted(unknown)}; allowed: "
                          f"{sorted(BEHAVIOUR | AFTER | FILE_OPTIONS)}")
    kwargs = {**config, **{k: v for k, v in overrides.items() if k in BEHAVIOUR}}
    vit = ViT(**kwargs)
    if state_dict is not None:
        checkpoint.load_strict(vit, state_dict, what=what)
    if overrides.get("img_size") is not None and overrides["img_size"] != kwargs.get("img_size"):
        vit.set_input_size(img_size=overrides["img_size"])
    if overrides.get("num_classes") is not None and overrides["num_classes"] != kwargs.get("num_classes", 0):
        vit.reset_classifier(overrides["num_classes"])
        vit._hub_mixin_config["num_classes"] = overrides["num_classes"]
    return vit


def backbone(converted: Converted, **overrides) -> ViT:
    """The backbone a converted file holds, in eval mode (what `mimzoo.load(..., model="backbone")` returns)."""
    config, state = file_backbone(converted, overrides.pop("pretraining_norm", False))
    return build(config, state, what=converted.config.get("format", "checkpoint"), **overrides).eval()


def file_backbone(converted: Converted, pretraining_norm: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """(ViT config, ViT state) of a file. `pretraining_norm`: the final norm its pretraining applied, which the
    downstream backbone drops (SemanticMIM: `mask_stream.norm`, upstream `ln1`, which its VOC linear
    segmentation keeps), becomes the backbone's `norm`."""
    config, state = converted.config["backbone"], converted.backbone_state()
    if not pretraining_norm:
        return config, state
    # an upstream converter names the part; a file mimzoo's SemanticMIM wrote holds it under its own name
    norm = converted.part(converted.config.get("pretraining_norm") or "mask_stream.norm")
    if not norm or config.get("final_norm", True) and not config.get("fc_norm"):
        raise ConfigError(f"{converted.source} holds no separate pretraining norm: pretraining_norm=True is for "
                          f"files whose downstream backbone drops one (SemanticMIM); drop the option")
    # timm has either a final norm or an fc_norm after pooling: the pretraining norm takes the final norm's place
    kept = {k: v for k, v in state.items() if not k.startswith(("norm.", "fc_norm."))}
    return {**config, "final_norm": True, "fc_norm": False}, {**kept, **{f"norm.{k}": v for k, v in norm.items()}}


def backbone_for(backbone: str | dict | None = None, backbone_kwargs: dict | None = None,
                 weights: str | os.PathLike | Converted | None = None, *, default: str = "vit_base_patch16",
                 defaults: dict | None = None, hints: dict | None = None,
                 **overrides) -> tuple[ViT, Converted | None]:
    """The backbone of a method, and the converted file it came from (None at random init).

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else `default`.
        backbone_kwargs: ViT arguments. With `weights`, architecture keys must agree with the file (a clash is an
            error); `BEHAVIOUR` and `AFTER` keys (drop path, pooling, img_size, ...) are applied over it.
        weights: a zoo name, a path in any supported format, `hf-hub:org/repo`, or an already read `Converted`.
        default / defaults: the method's architecture and ViT arguments when built without weights.
        hints: head counts the weights cannot show (`decoder_num_heads`), for reading `weights`.
        overrides: `BEHAVIOUR` / `AFTER` values the method itself sets (e.g. a fine-tuning resolution).
    """
    kwargs = dict(backbone_kwargs or {})
    settable = {k: kwargs.pop(k) for k in list(kwargs) if k in BEHAVIOUR | AFTER | FILE_OPTIONS}
    settable.update({k: v for k, v in overrides.items() if v is not None})
    if weights is None:
        config = backbone_config(backbone or default, {**(defaults or {}), **kwargs})
        img_size = settable.pop("img_size", None)
        if img_size is not None:
            config["img_size"] = img_size
        return build(config, **settable), None
    converted = read(weights, num_heads=kwargs.get("num_heads"), **{k: v for k, v in (hints or {}).items() if v})
    config, state = file_backbone(converted, settable.pop("pretraining_norm", False))
    asked = backbone_config(backbone, kwargs) if backbone is not None else kwargs
    clash = {k: (v, config.get(k)) for k, v in asked.items()
             if k not in BEHAVIOUR | AFTER and config.get(k, _absent) != v and not _same(config.get(k), v)}
    if clash:
        said = ", ".join(f"{k}={v!r} (the file has {f!r})" for k, (v, f) in clash.items())
        raise ConfigError(f"{said} contradicts the architecture of {converted.source}: with weights the file "
                          f"decides the architecture; drop the argument or choose other weights")
    return build(config, state, what=str(converted.source), **settable), converted


_absent = object()


def _same(a, b) -> bool:
    """Equal up to list/tuple (JSON gives lists where configs hold tuples)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return False
