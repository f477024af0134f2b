"""naver/croco: `CroCoNet` checkpoints, v1 (fixed 2-D cosine position table) and v2 (2-D RoPE)."""
from __future__ import annotations

import re

import torch

from .keys import (
    DECODER_HEADS,
    ENCODER_HEADS,
    ConversionError,
    KeyMap,
    block_count,
    grid_side,
    heads_for,
    mlp_ratio,
    patch_embed_config,
    require,
)

NAME = "croco"

KEYS = KeyMap(rename=[
    (r"(patch_embed\.proj\.(weight|bias))", r"backbone.\1"),
    (r"enc_pos_embed", r"backbone.pos_embed"),
    (r"enc_blocks\.(.*)", r"backbone.blocks.\1"),
    (r"enc_norm\.(weight|bias)", r"backbone.norm.\1"),
    (r"mask_token", r"decoder.mask_token"),
    (r"dec_pos_embed", r"decoder.pos_embed"),
    (r"decoder_embed\.(weight|bias)", r"decoder.embed.\1"),
    (r"dec_blocks\.(.*)", r"decoder.blocks.\1"),
    (r"dec_norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"prediction_head\.(weight|bias)", r"decoder.pred.\1"),
])


def detect(sd: dict) -> bool:
    return any(k.startswith("enc_blocks.") for k in sd)


def rope_quarter_swap(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Swap the 2nd and 3rd quarter of every head's channels (rows of a q or k projection).

    CroCo rotates the row half and the column half of a head separately; timm's 'half' RoPE pairs channel j with
    j + head_dim/2. After this swap, timm's layout computes exactly CroCo's attention scores (q.k is unchanged by a
    permutation applied to both q and k). The swap is its own inverse.
    """
    head_dim = w.shape[0] // num_heads
    q = head_dim // 4
    perm = torch.cat([torch.arange(0, q), torch.arange(2 * q, 3 * q), torch.arange(q, 2 * q),
                      torch.arange(3 * q, 4 * q)])
    perm = (perm[None] + head_dim * torch.arange(num_heads)[:, None]).flatten()
    return w[perm]


def _permute_qk(out: dict, enc_heads: int, dec_heads: int) -> None:
    for key in list(out):
        if m := re.fullmatch(r"(backbone|decoder)\.blocks\.\d+\.attn\.qkv\.(weight|bias)", key):
            heads = enc_heads if m.group(1) == "backbone" else dec_heads
            w = out[key]
            d = w.shape[0] // 3
            out[key] = torch.cat([rope_quarter_swap(w[:d], heads), rope_quarter_swap(w[d:2 * d], heads), w[2 * d:]])
        elif re.fullmatch(r"decoder\.blocks\.\d+\.cross_attn\.proj[qk]\.(weight|bias)", key):
            out[key] = rope_quarter_swap(out[key], dec_heads)


def rope_base(pos_embed: str) -> float:
    m = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", pos_embed)
    if not m:
        raise ConversionError(f"unknown CroCo pos_embed {pos_embed!r}; expected 'cosine' or 'RoPE<base>'")
    return float(m.group(1))


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    kwargs = dict((meta or {}).get("croco_kwargs") or {})
    require(sd, ["patch_embed.proj.weight", "enc_blocks.0.mlp.fc1.weight", "enc_norm.weight"], NAME)
    cfg = patch_embed_config(sd["patch_embed.proj.weight"])
    width = cfg["embed_dim"]
    # The v1 release carries no kwargs: its fixed table is the tell. Every released v2 model uses RoPE base 100.
    pos = kwargs.get("pos_embed") or ("cosine" if "enc_pos_embed" in sd else "RoPE100")
    enc_heads = num_heads or kwargs.get("enc_num_heads") or heads_for(width, ENCODER_HEADS, 64, "encoder")
    if pos == "cosine":
        require(sd, ["enc_pos_embed"], NAME)
        side = grid_side(sd["enc_pos_embed"].shape[0], "enc_pos_embed")
    else:
        side = kwargs.get("img_size", 224) // cfg["patch_size"]
    cfg.update(img_size=side * cfg["patch_size"], depth=block_count(sd, "enc_blocks"), num_heads=enc_heads,
               mlp_ratio=mlp_ratio(sd, "enc_blocks.0.mlp.fc1.weight", width), class_token=False,
               pos_embed="sincos" if pos == "cosine" else "rope", global_pool="avg",
               rope_base=100.0 if pos == "cosine" else rope_base(pos))
    decoder = None
    if "decoder_embed.weight" in sd:
        dwidth = sd["decoder_embed.weight"].shape[0]
        decoder = {"kind": "cross", "embed_dim": dwidth, "depth": block_count(sd, "dec_blocks"),
                   "num_heads": decoder_num_heads or kwargs.get("dec_num_heads")
                   or heads_for(dwidth, DECODER_HEADS, 32, "decoder"),
                   "mlp_ratio": mlp_ratio(sd, "dec_blocks.0.mlp.fc1.weight", dwidth),
                   "pred_dim": sd["prediction_head.weight"].shape[0]}
    out, dropped = KEYS.apply(sd, NAME)
    for key in ("backbone.pos_embed", "decoder.pos_embed"):
        if key in out and out[key].dim() == 2:  # CroCo stores (N, D) buffers; the ViT keeps (1, N, D)
            out[key] = out[key].unsqueeze(0)
    if cfg["pos_embed"] == "rope":
        _permute_qk(out, enc_heads, decoder["num_heads"] if decoder else 1)
    config = {"format": NAME, "method": "croco", "contents": "pretrainer" if decoder else "encoder",
              "backbone": cfg, "decoder": decoder, "version": 1 if pos == "cosine" else 2,
              "mask_ratio": kwargs.get("mask_ratio", 0.9), "dropped": dropped}
    return config, out
