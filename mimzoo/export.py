"""Take mimzoo weights to other tools: a timm Hub folder or a transformers ViTMAE folder (`mimzoo export`).

- timm: the backbone as the `VisionTransformer` timm builds from `config.json` (`architecture`, `model_args`,
  `pretrained_cfg` with the weights' mean, std, input size, crop and interpolation), written by timm's own
  `save_for_hf`: `timm.create_model("local-dir:DIR", pretrained=True)` loads it, and so does
  `create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=DIR/model.safetensors), **model_args)`.
- transformers: `ViTMAEForPreTraining` (an MAE with its decoder) or `ViTMAEModel` (an encoder) in the key names of
  the released `facebook/vit-mae-*` files, which every transformers version reads, plus `preprocessor_config.json`.

Only what the other library can express is written; anything else (RoPE, post-norm blocks, cross-view decoders)
is an error saying why. Every export is checked before it is kept: timm rebuilds the folder and its features must
equal mimzoo's (transformers too, where it is installed; mimzoo never needs it), and each folder gets a model card.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import cards, loading
from .checkpoint import atomic_path, write_safetensors
from .convert import transformers_vitmae
from .errors import ConfigError
from .models import ViT

log = logging.getLogger("mimzoo")
TARGETS = ("timm", "transformers")
TOLERANCE = 1e-4  # features of the other library's rebuild vs mimzoo's, on a seeded input (exact eps: ~1e-6)
TIMM_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge", 1408: "giant"}


class ExportError(ConfigError):
    """The weights cannot be expressed in the target library (the message says what it lacks)."""


def export(name_or_path, to: str, dst: str | os.PathLike, *, cache_dir: str | None = None) -> Path:
    """Write `name_or_path` (anything `mimzoo.load` reads) as a `to` ("timm" | "transformers") folder at `dst`;
    returns `dst`."""
    if to not in TARGETS:
        raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    converted = loading.read(name_or_path, cache_dir=cache_dir)
    facts = cards.provenance(converted.config, converted.source)
    write = _timm if to == "timm" else _transformers
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    # written and checked in a scratch folder beside dst, then moved file by file: a failure leaves dst as it was
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as tmp:
        what, usage, library = write(converted, Path(tmp))
        cards.write_card(tmp, cards.model_card(facts, what=what, library=library, usage=usage))
        for f in sorted(Path(tmp).iterdir()):
            with atomic_path(dst / f.name) as out:
                shutil.copyfile(f, out)
    return dst


# -- timm ---------------------------------------------------------------------------------------------------------
def timm_model_args(cfg: dict) -> dict:
    """timm `VisionTransformer` arguments for a mimzoo ViT config, or ExportError naming what timm lacks."""
    lacks = {"rope": cfg.get("pos_embed") == "rope" and "2-D RoPE attention (CroCo v2)",
             "block": cfg.get("block", "prenorm") != "prenorm" and "post-norm blocks (data2vec 2.0)",
             "embed_norm": cfg.get("embed_norm") and "a LayerNorm after the embedding with a patch-embed bias"}
    why = [w for w in lacks.values() if w]
    if why:
        raise ExportError(f"timm's VisionTransformer has no {', '.join(why)}: this backbone cannot be a timm ViT "
                          f"(load it with mimzoo.load, or export it to a format that has them)")
    return {
        "img_size": cfg.get("img_size", 224), "patch_size": cfg.get("patch_size", 16),
        "in_chans": cfg.get("in_chans", 3), "embed_dim": cfg.get("embed_dim", 768), "depth": cfg.get("depth", 12),
        "num_heads": cfg.get("num_heads", 12), "mlp_ratio": cfg.get("mlp_ratio", 4.0),
        "qkv_bias": cfg.get("qkv_bias", True), "class_token": cfg.get("class_token", True),
        "reg_tokens": cfg.get("reg_tokens", 0), "no_embed_class": not cfg.get("pos_embed_prefix", True),
        "pos_embed": "none" if cfg.get("pos_embed") == "none" else "learn",
        "global_pool": cfg.get("global_pool", "token") if cfg.get("class_token", True) else "avg",
        "fc_norm": bool(cfg.get("fc_norm", False)), "final_norm": bool(cfg.get("final_norm", True) or
                                                                         cfg.get("fc_norm", False)),
        "num_classes": cfg.get("num_classes", 0), "init_values": cfg.get("init_values"),
        "dynamic_img_size": bool(cfg.get("dynamic_img_size", False)),
    }


def _timm(converted, tmp: Path) -> tuple[str, str, str]:
    import timm
    from timm.models import save_for_hf

    vit = loading.backbone(converted)
    args = timm_model_args(vit._hub_mixin_config)
    size = TIMM_SIZES.get(args["embed_dim"], "base")
    name = f"vit_{size}_patch{args['patch_size']}_{args['img_size']}"
    arch = name if name in timm.list_models(name) else "vit_base_patch16_224"  # model_args set every size
    model = timm.create_model(arch, pretrained=False, **args).eval()
    model.load_state_dict(vit.state_dict(), strict=True)  # mimzoo's ViT is timm's: the same keys
    d = vit.data_config
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": tuple(d["mean"]), "std": tuple(d["std"]),
                            "input_size": tuple(d["input_size"]), "crop_pct": d["crop_pct"],
                            "interpolation": d["interpolation"], "num_classes": args["num_classes"]}
    save_for_hf(model, tmp, model_args=args, safe_serialization=True)
    rebuilt = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()  # what a timm user does
    _check(vit.forward_features, rebuilt.forward_features, d["input_size"], "timm")
    if vit.norm.eps != 1e-6:
        log.info("timm's ViT LayerNorms use eps 1e-6; these weights were trained with %g (features within %g)",
                 vit.norm.eps, TOLERANCE)
    usage = 'import timm\n\nmodel = timm.create_model("local-dir:path/to/this/folder", pretrained=True)'
    return f"A ViT backbone exported by mimzoo for timm ({arch} with `model_args`).", usage, "timm"


# -- transformers -------------------------------------------------------------------------------------------------
def _transformers(converted, tmp: Path) -> tuple[str, str, str]:
    vit = loading.backbone(converted)
    cfg = vit._hub_mixin_config
    decoder = converted.config.get("decoder") if converted.config.get("method") == "mae" else None
    decoder_sd = converted.part("decoder") if decoder else {}
    hf_config, sd = transformers_vitmae.to_transformers(
        cfg, vit.state_dict(), decoder, decoder_sd, mask_ratio=converted.fact("mask_ratio") or 0.75,
        norm_pix_loss=bool(converted.fact("norm_pix_loss")))
    write_safetensors(sd, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
    d = vit.data_config
    size = d["input_size"][-1]
    (tmp / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "resample": {"bilinear": 2, "bicubic": 3}.get(d["interpolation"], 3), "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(d["mean"]),
        "image_std": list(d["std"])}, indent=2))
    _check_transformers(vit, tmp)
    cls = hf_config["architectures"][0]
    usage = f'from transformers import {cls}\n\nmodel = {cls}.from_pretrained("path/to/this/folder")'
    return (f"An MAE exported by mimzoo for transformers ({cls}).", usage, "transformers")


def _check_transformers(vit: ViT, folder: Path) -> None:
    try:
        from transformers import ViTMAEModel
    except ImportError:  # never a runtime dependency; the key mapping is tested against transformers
        log.info("transformers is not installed: the export was not loaded back to check it")
        return
    model = ViTMAEModel.from_pretrained(folder, mask_ratio=0.0).eval()
    n = vit.num_patches
    noise = torch.arange(n, dtype=torch.float32)[None]  # ascending: transformers keeps every patch in order

    def theirs(x):
        return model(pixel_values=x, noise=noise.expand(x.shape[0], -1)).last_hidden_state

    _check(vit.forward_features, theirs, vit.data_config["input_size"], "transformers")


def _check(ours, theirs, input_size, target: str) -> None:
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    if not diff <= TOLERANCE:
        raise ExportError(f"the {target} rebuild of the export differs from mimzoo's features by {diff:.2e} "
                          f"(> {TOLERANCE}); nothing was written")
