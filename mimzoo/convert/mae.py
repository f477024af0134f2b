"""facebookresearch/mae: `MaskedAutoencoderViT` (pretrain, full and visualize), released encoders, fine-tuned ViTs.

Also reads a plain timm ViT state dict, which shares MAE's encoder key names.
"""
from __future__ import annotations

from .keys import (
    DECODER_HEADS,
    ENCODER_HEADS,
    KeyMap,
    block_count,
    grid_side,
    heads_for,
    mlp_ratio,
    patch_embed_config,
    require,
)

NAME = "mae"

ENCODER = [
    (r"(cls_token|pos_embed)", r"backbone.\1"),
    (r"(patch_embed\.proj\.(weight|bias))", r"backbone.\1"),
    (r"(blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))", r"backbone.\1"),
    (r"((norm|fc_norm|head)\.(weight|bias))", r"backbone.\1"),
]
DECODER = [
    (r"mask_token", r"decoder.mask_token"),
    (r"decoder_pos_embed", r"decoder.pos_embed"),
    (r"decoder_embed\.(weight|bias)", r"decoder.embed.\1"),
    (r"decoder_blocks\.(.*)", r"decoder.blocks.\1"),
    (r"decoder_norm\.(weight|bias)", r"decoder.norm.\1"),
    (r"decoder_pred\.(weight|bias)", r"decoder.pred.\1"),
]


def detect(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd and "blocks.0.attn.qkv.weight" in sd and "cls_token" in sd


def heads_from_meta(meta: dict, width: int) -> int | None:
    """MAE's saved `args.model` names the size (e.g. mae_vit_large_patch16); trusted only if the width agrees."""
    name = str(getattr(meta.get("args"), "model", ""))
    for size, (w, heads) in {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16),
                             "huge": (1280, 16)}.items():
        if f"vit_{size}" in name and w == width:
            return heads
    return None


def encoder_config(sd: dict, meta: dict, fmt: str, num_heads: int | None = None) -> dict:
    """ViT config of an MAE-layout encoder (cls token + pos table with a cls row)."""
    require(sd, ["patch_embed.proj.weight", "pos_embed", "cls_token", "blocks.0.mlp.fc1.weight"], fmt)
    cfg = patch_embed_config(sd["patch_embed.proj.weight"])
    width = cfg["embed_dim"]
    side = grid_side(sd["pos_embed"].shape[1] - 1, "pos_embed")
    finetuned = "fc_norm.weight" in sd
    cfg.update(
        img_size=side * cfg["patch_size"], depth=block_count(sd, "blocks"),
        num_heads=num_heads or heads_from_meta(meta, width) or heads_for(width, ENCODER_HEADS, 64, "encoder"),
        mlp_ratio=mlp_ratio(sd, "blocks.0.mlp.fc1.weight", width), class_token=True,
        # fine-tuning makes the table a learned parameter; pretraining keeps it fixed (loaded, never regenerated)
        pos_embed="learn" if finetuned else "sincos",
        # MAE drops the final norm only for global-pool fine-tuning (fc_norm instead): a file without either is
        # missing keys, never a model without its norm
        final_norm=not finetuned, fc_norm=finetuned, global_pool="avg" if finetuned else "token",
        num_classes=sd["head.weight"].shape[0] if "head.weight" in sd else 0,
    )
    return cfg


def decoder_config(sd: dict, blocks: str, num_heads: int | None = None, kind: str = "mae") -> dict | None:
    """The decoder's config; `kind` says which decoder module holds it: "mae" (MAEDecoder) or "cross" (the
    cross-view CrossDecoder, MIMIC's layout)."""
    if "decoder_embed.weight" not in sd:
        return None
    width = sd["decoder_embed.weight"].shape[0]
    return {
        "kind": kind, "embed_dim": width, "depth": block_count(sd, blocks),
        "num_heads": num_heads or heads_for(width, DECODER_HEADS, 32, "decoder"),
        "mlp_ratio": mlp_ratio(sd, f"{blocks}.0.mlp.fc1.weight", width),
        "pred_dim": sd["decoder_pred.weight"].shape[0],
    }


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    meta = meta or {}
    backbone = encoder_config(sd, meta, NAME, num_heads)
    decoder = decoder_config(sd, "decoder_blocks", decoder_num_heads)
    out, dropped = KeyMap(ENCODER + DECODER).apply(sd, NAME)
    contents = "finetuned" if backbone["num_classes"] else ("pretrainer" if decoder else "encoder")
    # a fine-tuned classifier is rebuilt by the fine-tuning method, not by MAE
    return {"format": NAME, "method": "finetune" if contents == "finetuned" else "mae", "contents": contents,
            "backbone": backbone, "decoder": decoder,
            "norm_pix_loss": getattr(meta.get("args"), "norm_pix_loss", None), "dropped": dropped}, out
