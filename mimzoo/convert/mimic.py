"""RAIVNLab/MIMIC: the multi-view `MaskedAutoencoderViT` (MAE encoder + CroCo-style cross-attention decoder).

This is the layout of the released MIMIC-3M checkpoint (CroCo objective); its encoder is MAE's.
"""
from __future__ import annotations

from . import mae
from .keys import KeyMap

NAME = "mimic"
DECODER = [(p.replace("decoder_blocks", "decoder_blocks_croco"), r) for p, r in mae.DECODER]


def detect(sd: dict) -> bool:
    return mae.detect(sd) and any(k.startswith("decoder_blocks_croco.") for k in sd)


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    meta = meta or {}
    backbone = mae.encoder_config(sd, meta, NAME, num_heads)
    decoder = mae.decoder_config(sd, "decoder_blocks_croco", decoder_num_heads, kind="cross")
    out, dropped = KeyMap(mae.ENCODER + DECODER).apply(sd, NAME)
    return {"format": NAME, "method": "mimic", "contents": "pretrainer", "backbone": backbone, "decoder": decoder,
            "norm_pix_loss": getattr(meta.get("args"), "norm_pix_loss", None), "dropped": dropped}, out
