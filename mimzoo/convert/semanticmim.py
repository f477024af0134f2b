"""yyk-wew/SemanticMIM pretraining checkpoints (mmengine Runner files of `MaskFeatOurs` / `BEiTOurs`).

The encoder stack (`backbone.layers`) becomes the downstream ViT that upstream fine-tunes and probes
(`VisionTransformerOurs` / `BEiTViTOurs`): the P proxy tokens are the cls token plus P-1 register tokens, each with
its own row of the learned position table; no final norm; average pooling of the patch tokens through a fresh
LayerNorm (upstream's `ln2`, missing from the file and left at identity). The mask stream, the final norm over all
token groups and the head are kept as the pretrainer's parts (`mask_stream.*`, `head.*`), with upstream's
separate q / kv projections.

Attention weights: MaskFeat's `attn.q` + `attn.kv` (rows 0..D-1 of kv are k) concatenate into timm's `qkv`;
BEiT's `q_proj` + `kv_proj` have no bias of their own but `q_bias` and `v_bias`, so the k part of `qkv.bias` is 0.
"""
from __future__ import annotations

import re

import torch

from .keys import ConversionError, block_count, heads_for, mlp_ratio, patch_embed_config, require

NAME = "semanticmim"
B = "backbone."
# per-block renames shared by both stacks (upstream -> timm)
BLOCK = [(r"ln1\.(weight|bias)", r"norm1.\1"), (r"ln2\.(weight|bias)", r"norm2.\1"),
         (r"ffn\.layers\.0\.0\.(weight|bias)", r"mlp.fc1.\1"), (r"ffn\.layers\.1\.(weight|bias)", r"mlp.fc2.\1"),
         (r"attn\.proj\.(weight|bias)", r"attn.proj.\1"), (r"gamma_1", r"ls1.gamma"), (r"gamma_2", r"ls2.gamma"),
         (r"attn\.q\.(weight|bias)", r"attn.q.\1"), (r"attn\.kv\.(weight|bias)", r"attn.kv.\1"),
         (r"attn\.q_proj\.weight", r"attn.q.weight"), (r"attn\.kv_proj\.weight", r"attn.kv.weight"),
         (r"attn\.q_bias", r"attn.q.bias"), (r"attn\.v_bias", r"attn.v_bias")]
DROPPED = {"target_generator.": "the HOG filters (fixed constants, rebuilt by mimzoo.models.hog.HOG) or the DALL-E "
                                "tokenizer (a separate model, passed to the method)"}


def detect(sd: dict) -> bool:
    return any(k.startswith(B + "extra_layers.") for k in sd) or (
        B + "patch_embed.projection.weight" in sd and any(re.match(r"backbone\.layers\.0\.attn\.(q|q_proj)\.weight$", k)
                                                          for k in sd))


def _block(sd: dict, prefix: str) -> dict:
    """One upstream layer's tensors under our block names (q / kv still separate)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        for pattern, repl in BLOCK:
            if re.fullmatch(pattern, rest):
                out[re.sub(pattern, repl, rest)] = value
                break
        else:
            raise ConversionError(f"key {key} of this {NAME} checkpoint is not accounted for; the file may be "
                                  f"another SemanticMIM variant")
    return out


def fuse_qkv(block: dict) -> dict:
    """Separate q / kv projections (and BEiT's q_bias / v_bias) -> timm's fused `attn.qkv`."""
    block = dict(block)
    q_w, kv_w = block.pop("attn.q.weight"), block.pop("attn.kv.weight")
    block["attn.qkv.weight"] = torch.cat([q_w, kv_w])
    q_b, kv_b, v_b = block.pop("attn.q.bias", None), block.pop("attn.kv.bias", None), block.pop("attn.v_bias", None)
    if kv_b is not None:
        block["attn.qkv.bias"] = torch.cat([q_b, kv_b])
    elif v_b is not None:  # BEiT: no k bias
        block["attn.qkv.bias"] = torch.cat([q_b, torch.zeros_like(v_b), v_b])
    return block


def cfg_value(meta: dict, name: str) -> int | None:
    """An integer the mmengine config text records (`meta['cfg']`), e.g. num_heads=12; None if absent."""
    found = re.findall(rf"\b{name}\s*=\s*(\d+)", str((meta.get("meta") or {}).get("cfg", "")))
    return int(found[0]) if found else None


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    meta = meta or {}
    require(sd, [B + "cls_token", B + "pos_embed", B + "patch_embed.projection.weight"], NAME)
    proxies = sd[B + "cls_token"]
    num_proxies, width = proxies.shape[1], proxies.shape[2]
    patch = patch_embed_config(sd[B + "patch_embed.projection.weight"])
    depth = block_count(sd, B + "layers")
    num_patches = sd[B + "pos_embed"].shape[1] - num_proxies
    side = round(num_patches ** 0.5)
    if side * side != num_patches:
        raise ConversionError(f"pos_embed has {sd[B + 'pos_embed'].shape[1]} rows for {num_proxies} proxy tokens: "
                              f"{num_patches} patch rows is not a square grid")
    beit = B + "layers.0.attn.q_proj.weight" in sd
    heads = num_heads or cfg_value(meta, "num_heads") or heads_for(width, {}, 64, "SemanticMIM encoder")
    backbone = {**patch, "img_size": side * patch["patch_size"], "depth": depth, "num_heads": heads,
                "mlp_ratio": mlp_ratio(sd, B + "layers.0.ffn.layers.0.0.weight", width), "pos_embed": "learn",
                "reg_tokens": num_proxies - 1, "final_norm": False, "global_pool": "avg", "fc_norm": True,
                "init_values": 0.1 if beit else None}
    out = {"backbone.cls_token": proxies[:, :1], "backbone.pos_embed": sd[B + "pos_embed"],
           "backbone.patch_embed.proj.weight": sd[B + "patch_embed.projection.weight"],
           "backbone.patch_embed.proj.bias": sd[B + "patch_embed.projection.bias"],
           "backbone.fc_norm.weight": torch.ones(width), "backbone.fc_norm.bias": torch.zeros(width)}
    if num_proxies > 1:
        out["backbone.reg_token"] = proxies[:, 1:]
    for i in range(depth):
        out.update({f"backbone.blocks.{i}.{k}": v for k, v in fuse_qkv(_block(sd, f"{B}layers.{i}.")).items()})
    extra = block_count(sd, B + "extra_layers")
    for i in range(extra):
        out.update({f"mask_stream.blocks.{i}.{k}": v for k, v in _block(sd, f"{B}extra_layers.{i}.").items()})
    renames = {B + "mask_token": "mask_stream.mask_token", B + "ln1.weight": "mask_stream.norm.weight",
               B + "ln1.bias": "mask_stream.norm.bias", "neck.fc.weight": "head.weight", "neck.fc.bias": "head.bias",
               "head.cls_head.weight": "head.weight", "head.cls_head.bias": "head.bias"}
    out.update({new: sd[old] for old, new in renames.items() if old in sd})
    dropped = {k: reason for k in sd for prefix, reason in DROPPED.items() if k.startswith(prefix)}
    known = {B + "cls_token", B + "pos_embed", B + "patch_embed.projection.weight", B + "patch_embed.projection.bias",
             *renames, *dropped}
    unknown = [k for k in sd if k not in known and not re.match(r"backbone\.(extra_)?layers\.\d+\.", k)]
    if unknown:
        raise ConversionError(f"{len(unknown)} key(s) of this {NAME} checkpoint are not accounted for: "
                              f"{', '.join(unknown[:8])}")
    has_pretrainer = extra == depth and "mask_stream.mask_token" in out
    return {"format": NAME, "method": NAME, "contents": "pretrainer" if has_pretrainer else "encoder",
            "backbone": backbone, "num_proxies": num_proxies, "target": "tokens" if beit else "hog",
            "vocab_size": out["head.weight"].shape[0] if beit and "head.weight" in out else None,
            "pretraining_norm": "mask_stream.norm" if "mask_stream.norm.weight" in out else None,
            "added": {"backbone.fc_norm.*": "identity fc_norm of SemanticMIM's downstream ViT (upstream ln2, not in "
                                            "the checkpoint)"},
            "dropped": dropped}, out
