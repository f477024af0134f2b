"""Hugging Face transformers `ViTMAEForPreTraining` / `ViTMAEModel` (e.g. `facebook/vit-mae-base`).

The network is MAE's, so the keys are renamed to facebookresearch/mae's layout and converted by `convert.mae`;
only the facts the weights cannot show come from the transformers config (`config.json`): head counts,
`layer_norm_eps` (1e-12 in the released configs and transformers' default, MAE's own is 1e-6), `norm_pix_loss`
(false in `facebook/vit-mae-*`, which were converted from MAE's pixel-target *visualize* files) and `mask_ratio`.

Key layouts: the released Hub files' and transformers < 5's (`vit.encoder.layer.N.attention.attention.query`,
`intermediate.dense`, `output.dense`, decoder `decoder.decoder_layers.N`), transformers 5's module names
(`vit.layers.N.attention.q_proj`, `mlp.fc1`), and what transformers 5 writes (the legacy names, decoder layers
under `decoder.decoder_encoder.layer.N`). All read; q, k and v concatenate into timm's fused `qkv`.
"""
from __future__ import annotations

import re

import torch

from . import mae
from .keys import ConversionError

NAME = "transformers_vitmae"
HF_DEFAULT_EPS = 1e-12  # ViTMAEConfig's default, used when a bare state dict comes without its config
# per-layer names (after the layer prefix) -> MAE's block names; None = fused into attn.qkv below
LAYER = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}
QKV = {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}
TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token", "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.decoder_embed.weight": "decoder_embed.weight", "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.decoder_norm.weight": "decoder_norm.weight", "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight", "decoder.decoder_pred.bias": "decoder_pred.bias",
}
# encoder layers: released / transformers 5 in memory; decoder layers: released, transformers 5 in memory, and what
# transformers 5's save_pretrained writes (`decoder.decoder_encoder.layer`)
LAYER_PREFIX = re.compile(r"(?:encoder\.layer|layers|decoder\.decoder_layers|decoder\.decoder_encoder\.layer)"
                          r"\.(\d+)\.(.+)")


def detect(sd: dict) -> bool:
    return any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in sd) and any(
        k.startswith(("vit.", "embeddings.")) for k in sd)


def to_mae_layout(sd: dict) -> dict:
    """transformers ViTMAE keys -> facebookresearch/mae keys (every key renamed, or an error naming it)."""
    out, qkv = {}, {}
    for key, value in sd.items():
        name = key[len("vit."):] if key.startswith("vit.") else key
        if name in TOP:
            out[TOP[name]] = value
            continue
        m = LAYER_PREFIX.fullmatch(name)
        if m is None:
            raise ConversionError(f"key {key} of this transformers ViTMAE checkpoint is not accounted for; the "
                                  f"file may be another architecture (only ViTMAEForPreTraining / ViTMAEModel)")
        i, rest = m.groups()
        blocks = "decoder_blocks" if name.startswith("decoder.") else "blocks"
        rest = rest.replace("attention.attention.", "attention.")
        part, _, kind = rest.rpartition(".")
        if part.startswith("attention.") and part.split(".", 1)[1] in QKV:
            qkv.setdefault((blocks, int(i), kind), [None] * 3)[QKV[part.split(".", 1)[1]]] = value
        elif part in LAYER:
            out[f"{blocks}.{i}.{LAYER[part]}.{kind}"] = value
        else:
            raise ConversionError(f"key {key} of this transformers ViTMAE checkpoint is not accounted for")
    for (blocks, i, kind), parts in qkv.items():
        if any(p is None for p in parts):
            raise ConversionError(f"layer {i} of {blocks} lacks one of query / key / value {kind}")
        out[f"{blocks}.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    return out


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    """`meta["hf_config"]`: the transformers config.json (a dict), when the file came with one."""
    hf = (meta or {}).get("hf_config") or {}
    if hf.get("model_type", "vit_mae") != "vit_mae":
        raise ConversionError(f"config.json says model_type={hf['model_type']!r}; mimzoo reads transformers "
                              f"ViTMAE (model_type 'vit_mae') checkpoints")
    config, out = mae.convert(to_mae_layout(sd), {}, num_heads or hf.get("num_attention_heads"),
                              decoder_num_heads or hf.get("decoder_num_attention_heads"))
    eps = float(hf.get("layer_norm_eps", HF_DEFAULT_EPS))
    config["backbone"]["norm_eps"] = eps
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("qkv_bias", True) is not True:
        raise ConversionError(f"hidden_act={hf.get('hidden_act')!r}, qkv_bias={hf.get('qkv_bias')!r}: mimzoo's ViT "
                              f"is MAE's (exact GELU, q/k/v biases)")
    if config.get("decoder"):
        config["decoder"]["norm_eps"] = eps
    config.update(format=NAME, norm_pix_loss=hf.get("norm_pix_loss"), mask_ratio=hf.get("mask_ratio"),
                  source_config={k: hf[k] for k in ("architectures", "transformers_version") if k in hf})
    return config, out


# -- the other way: mimzoo -> transformers (`mimzoo export --to transformers`) ------------------------------------
# mimzoo's per-block names -> the released files' (transformers 4 / `facebook/vit-mae-*`), which every version reads
TO_LAYER = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
FROM_MAE = {mae_name: hf_name for hf_name, mae_name in TOP.items()}  # MAE layout -> the un-prefixed HF name


def _blocks(sd: dict, prefix: str, out: dict, where: str) -> None:
    for key, value in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if m is None:
            continue
        i, name, kind = m.groups()
        if name == "attn.qkv":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{prefix}.{i}.attention.attention.{part}.{kind}"] = chunk.clone()
        elif name in TO_LAYER:
            out[f"{prefix}.{i}.{TO_LAYER[name]}.{kind}"] = value
        else:
            raise ConversionError(f"{where} key {key} has no ViTMAE counterpart")


def to_transformers(backbone: dict, sd: dict, decoder: dict | None = None, decoder_sd: dict | None = None, *,
                    mask_ratio: float = 0.75, norm_pix_loss: bool = False) -> tuple[dict, dict]:
    """(config.json, state dict) of a transformers ViTMAE for a mimzoo backbone (config, tensors) and optionally
    an MAE decoder: `ViTMAEForPreTraining` with a decoder, `ViTMAEModel` (keys without `vit.`) without one.
    ConversionError names whatever ViTMAE cannot hold."""
    eps = backbone.get("norm_eps", 1e-6)
    rules = {
        "a cls token": backbone.get("class_token", True), "no register/proxy tokens": not backbone.get("reg_tokens"),
        "fixed sin-cos or learned positions with a cls row": backbone.get("pos_embed", "sincos") in ("sincos", "learn")
        and backbone.get("pos_embed_prefix", True),
        "pre-norm blocks": backbone.get("block", "prenorm") == "prenorm" and not backbone.get("embed_norm"),
        "q/k/v biases": backbone.get("qkv_bias", True), "no layer scale": backbone.get("init_values") is None,
        "a final norm": backbone.get("final_norm", True) and not backbone.get("fc_norm"),
        "no classifier": not backbone.get("num_classes"),
        "an MAE decoder with the encoder's LayerNorm eps": decoder is None or (
            decoder.get("kind", "mae") == "mae" and decoder.get("norm_eps", 1e-6) == eps),
    }
    lacking = [rule for rule, ok in rules.items() if not ok]
    if lacking:
        raise ConversionError(f"transformers' ViTMAE needs {', '.join(lacking)}; this model does not have it "
                              f"(export it with --to timm, or keep it in mimzoo's format)")
    width, patch = backbone.get("embed_dim", 768), backbone.get("patch_size", 16)
    out = {f"vit.{FROM_MAE[k]}": v for k, v in sd.items() if k in FROM_MAE}  # the encoder's keys are MAE's
    _blocks(sd, "vit.encoder.layer", out, "backbone")
    config = {
        "architectures": ["ViTMAEForPreTraining" if decoder else "ViTMAEModel"], "model_type": "vit_mae",
        "hidden_size": width, "num_hidden_layers": backbone.get("depth", 12),
        "num_attention_heads": backbone.get("num_heads", 12),
        "intermediate_size": int(width * backbone.get("mlp_ratio", 4.0)), "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "layer_norm_eps": eps, "image_size": backbone.get("img_size", 224), "patch_size": patch,
        "num_channels": backbone.get("in_chans", 3), "qkv_bias": True, "mask_ratio": mask_ratio,
        "norm_pix_loss": norm_pix_loss,
    }
    if decoder:
        for key, value in decoder_sd.items():
            if not key.startswith("blocks."):  # MAEDecoder's `embed.weight` is MAE's `decoder_embed.weight`, ...
                out[FROM_MAE.get(key if key == "mask_token" else f"decoder_{key}")] = value
        _blocks(decoder_sd, "decoder.decoder_layers", out, "decoder")
        config.update(decoder_hidden_size=decoder["embed_dim"], decoder_num_hidden_layers=decoder["depth"],
                      decoder_num_attention_heads=decoder["num_heads"],
                      decoder_intermediate_size=int(decoder["embed_dim"] * decoder.get("mlp_ratio", 4.0)))
    else:
        out = {k[len("vit."):]: v for k, v in out.items()}
    if None in out:
        raise ConversionError("a decoder key has no ViTMAE counterpart")
    return config, out
