"""facebookresearch/fairseq data2vec 2.0 image checkpoints (`{base,large,huge}_imagenet.pt`: the `model` entry of
a `Data2VecMultiModel`, image modality), read as MIM-Refiner reads them (`PretrainedInitializer`, `data2vec2`):
renamed into its `PostnormVit` layout, then converted as a MIM-Refiner post-norm encoder.

fairseq order: patch embedding -> + fixed sin-cos positions (patches only) -> prepend `extra_tokens` (the cls
token) -> `context_encoder.norm` (embedding LayerNorm) -> post-norm blocks, no final norm.
"""
from __future__ import annotations

from . import mim_refiner
from .keys import ConversionError, grid_side, require

NAME = "data2vec2"
IMAGE = "modality_encoders.IMAGE."
TO_REFINER = {
    IMAGE + "local_encoder.proj.weight": "patch_embed.proj.weight",
    IMAGE + "local_encoder.proj.bias": "patch_embed.proj.bias",
    IMAGE + "extra_tokens": "cls_tokens.tokens",
    IMAGE + "fixed_positional_encoder.positions": "pos_embed.embed",
    IMAGE + "context_encoder.norm.weight": "embed_norm.weight",
    IMAGE + "context_encoder.norm.bias": "embed_norm.bias",
}
DROPPED = {"decoder": "data2vec 2.0's convolutional decoder (pretraining only)",
           "_ema": "the EMA teacher's copy of the blocks (pretraining only)"}


def detect(sd: dict) -> bool:
    return any(k.removeprefix("model.") == IMAGE + "local_encoder.proj.weight" for k in sd)


def convert(sd: dict, meta: dict | None = None, num_heads: int | None = None,
            decoder_num_heads: int | None = None) -> tuple[dict, dict]:
    sd = {k.removeprefix("model."): v for k, v in sd.items()}  # fine-tuned checkpoints nest the model once more
    require(sd, list(TO_REFINER), NAME)
    dropped = {k: reason for k in sd for part, reason in DROPPED.items() if part in k}
    refiner = {TO_REFINER.get(k, k): v for k, v in sd.items() if k not in dropped}
    other = sorted(k for k in refiner if k.startswith(IMAGE))
    if other:
        raise ConversionError(f"{len(other)} key(s) of this {NAME} checkpoint are not accounted for: "
                              f"{', '.join(other[:8])}; it may be another data2vec 2.0 modality or variant")
    positions = refiner["pos_embed.embed"]
    side = grid_side(positions.shape[1], "fixed_positional_encoder.positions")
    refiner["pos_embed.embed"] = positions.reshape(1, side, side, positions.shape[-1])
    config, out = mim_refiner.convert(refiner, {}, num_heads=num_heads)
    return {**config, "format": NAME, "method": NAME, "dropped": {**config["dropped"], **dropped}}, out
