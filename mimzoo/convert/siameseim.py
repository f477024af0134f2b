"""OpenGVLab/Siamese-Image-Modeling: `SiameseIMViT` pretraining checkpoints (online + momentum branches)."""
from __future__ import annotations

import torch

from . import mae
from .keys import KeyMap, block_count, mlp_ratio

NAME = "siameseim"

KEYS = KeyMap(
    rename=mae.ENCODER + [
        # the projector and predictor (mimzoo.models.decoders.SiameseDecoder)
        (r"decoder_embed\.(.*)", r"decoder.embed.\1"),
        (r"projector_decoder_blocks\.(.*)", r"decoder.projector.\1"),
        (r"predictor_decoder_blocks\.(.*)", r"decoder.predictor.\1"),
        (r"decoder_pos_mlp\.(.*)", r"decoder.pos_mlp.\1"),
        (r"decoder_pred\.(.*)", r"decoder.pred.\1"),
        (r"decoder_pos_embed", r"decoder.pos_embed"),
        (r"mask_token", r"decoder.mask_token"),
        # the momentum target (mimzoo.methods.siameseim.MomentumTarget); it shares the online pos_embed
        (r"mm_cls_token", r"momentum.cls_token"),
        (r"mm_(patch_embed|blocks)\.(.*)", r"momentum.\1.\2"),
        (r"mm_decoder_embed\.(.*)", r"momentum.embed.\1"),
        (r"mm_projector_decoder_blocks\.(.*)", r"momentum.projector.\1"),
    ],
    drop=[(r"decoder_blocks\..*",
           "decoder blocks exist only for loss_type='mae'; the 'sim' objective never uses them"),
          (r"mm_mask_token", "the momentum target encodes the full view 2 and never uses a mask token")],
)

DECODER_HEADS = 16  # every upstream SiameseIM constructor (sim_vit_*_dec512d8b) builds 16 decoder heads


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
            "decoder": decoder_config(sd, decoder_num_heads),
            "args": vars(args) if args is not None and hasattr(args, "__dict__") else None,
            "added": {"backbone.fc_norm.*": "identity fc_norm of SiameseIM's downstream ViT (not in the checkpoint)"},
            "dropped": dropped}, out


def decoder_config(sd: dict, num_heads: int | None = None) -> dict | None:
    if "decoder_embed.weight" not in sd:
        return None
    width = sd["decoder_embed.weight"].shape[0]
    blocks = "predictor_decoder_blocks"
    return {"kind": "siameseim", "embed_dim": width, "projector_depth": block_count(sd, "projector_decoder_blocks"),
            "predictor_depth": block_count(sd, blocks), "num_heads": num_heads or DECODER_HEADS,
            "mlp_ratio": mlp_ratio(sd, f"{blocks}.0.mlp.fc1.weight", width)}
