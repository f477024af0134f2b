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
