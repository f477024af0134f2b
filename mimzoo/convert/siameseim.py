"""OpenGVLab/Siamese-Image-Modeling: `SiameseIMViT` pretraining checkpoints (online + momentum branches)."""
from __future__ import annotations

import torch

from . import mae
from .keys import KeyMap

NAME = "siameseim"

KEYS = KeyMap(
    rename=mae.ENCODER + [
        (r"mm_(cls_token|mask_token)", r"momentum.\1"),
        (r"mm_(patch_embed|blocks|decoder_embed|projector_decoder_blocks)\.(.*)", r"momentum.\1.\2"),
        (r"(mask_token|decoder_pos_embed)", r"decoder.\1"),
        (r"(decoder_embed|decoder_pos_mlp|decoder_pred|projector_decoder_blocks|predictor_decoder_blocks)\.(.*)",
         r"decoder.\1.\2"),
    ],
    drop=[(r"decoder_blocks\..*",
           "decoder blocks exist only for loss_type='mae'; the 'sim' objective never uses them")],
)


def detect(sd: dict) -> bool:
    return any(k.startswith(("mm_blocks.", "projector_decoder_blocks.")) for k in sd)


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    meta = meta or {}
    backbone = mae.encoder_config(sd, meta, NAME, num_heads)
    # Its encoder has no final norm; the downstream ViT (main_finetune / main_linprobe) pools the patch tokens and
    # applies a fresh fc_norm, which starts as the identity LayerNorm added below.
    backbone.update(final_norm=False, global_pool="avg", fc_norm=True)
    out, dropped = KEYS.apply(sd, NAME)
    width = backbone["embed_dim"]
    out["backbone.fc_norm.weight"] = torch.ones(width)
    out["backbone.fc_norm.bias"] = torch.zeros(width)
    args = meta.get("args")
    return {"format": NAME, "method": "siameseim", "contents": "pretrainer", "backbone": backbone,
            "decoder": ({"kind": "siameseim", "embed_dim": sd["decoder_embed.weight"].shape[0]}
                        if "decoder_embed.weight" in sd else None),
            "args": vars(args) if args is not None and hasattr(args, "__dict__") else None,
            "added": {"backbone.fc_norm.*": "identity fc_norm of SiameseIM's downstream ViT (not in the checkpoint)"},
            "dropped": dropped}, out
