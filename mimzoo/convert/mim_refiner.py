"""ml-jku/MIM-Refiner: the hub encoders `PrenormVit` (MAE/dBOT/CrossMAE refined) and `PostnormVit` (data2vec 2.0)."""
from __future__ import annotations

from .keys import ENCODER_HEADS, KeyMap, block_count, heads_for, mlp_ratio, patch_embed_config, require

NAME = "mim_refiner"

KEYS = KeyMap(rename=[
    (r"cls_tokens\.tokens", r"backbone.cls_token"),
    (r"pos_embed\.embed", r"backbone.pos_embed"),
    (r"(patch_embed\.proj\.(weight|bias))", r"backbone.\1"),
    (r"(blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))", r"backbone.\1"),
    (r"norm\.(weight|bias)", r"backbone.norm.\1"),
    (r"embed_norm\.(weight|bias)", r"backbone.norm_pre.\1"),
])


def detect(sd: dict) -> bool:
    return "cls_tokens.tokens" in sd or "pos_embed.embed" in sd


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    ctor = dict((meta or {}).get("ctor_kwargs") or {})
    require(sd, ["patch_embed.proj.weight", "pos_embed.embed", "cls_tokens.tokens", "blocks.0.mlp.fc1.weight"], NAME)
    cfg = patch_embed_config(sd["patch_embed.proj.weight"])
    width = cfg["embed_dim"]
    postnorm = "embed_norm.weight" in sd
    gh, gw = sd["pos_embed.embed"].shape[1:3]
    cfg.update(img_size=gh * cfg["patch_size"], depth=block_count(sd, "blocks"),
               num_heads=num_heads or ctor.get("num_attn_heads") or heads_for(width, ENCODER_HEADS, 64, "encoder"),
               mlp_ratio=mlp_ratio(sd, "blocks.0.mlp.fc1.weight", width), class_token=True,
               pos_embed="sincos", pos_embed_prefix=False,  # the cls token gets no position
               block="postnorm" if postnorm else "prenorm", embed_norm=postnorm, final_norm=not postnorm,
               global_pool="token")
    out, dropped = KEYS.apply(sd, NAME)
    out["backbone.pos_embed"] = out["backbone.pos_embed"].reshape(1, gh * gw, width)
    return {"format": NAME, "method": "mim_refiner", "contents": "encoder", "backbone": cfg, "decoder": None,
            "dropped": dropped}, out
