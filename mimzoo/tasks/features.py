"""Frozen features of a backbone for a dataset: batched on the device, bf16 on GPU, cached to safetensors."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from ..checkpoint import write_safetensors
from ..errors import ConfigError

POOLINGS = ("default", "cls", "cls_prenorm", "cls_avg", "cls_last4", "cls_avg_last4", "avg")


def pooled(vit, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """'cls': the cls token after the final norm (MAE's linear probe, DINO's k-NN), 'cls_prenorm': the last block's
    cls token before the final norm (the few-shot feature of MSN, SiameseIM and MIM-Refiner), 'avg': mean of the
    final-normed patch tokens (CroCo, which has no cls token), 'default': what the model's own forward returns
    (its converter sets the pooling of the checkpoint's paper). MIM-Refiner's probe grid also uses 'cls_avg'
    ([cls, avg] after the final norm), 'cls_last4' (the raw cls tokens of the last 4 blocks, concatenated) and
    'cls_avg_last4' ([cls, avg] of each of the last 4 raw block outputs)."""
    if pooling == "default":
        return vit(images)
    if pooling in ("cls_prenorm", "cls_last4", "cls_avg_last4"):
        if not vit.num_prefix_tokens:
            raise ConfigError("this backbone has no cls token: use pooling='avg'")
        n = 1 if pooling == "cls_prenorm" else min(4, len(vit.blocks))
        blocks = vit.forward_intermediates(images, indices=n, intermediates_only=True, output_fmt="NLC",
                                           return_prefix_tokens=True)  # raw outputs of the last n blocks
        parts = [prefix[:, 0] for _, prefix in blocks]
        if pooling == "cls_avg_last4":
            parts = [torch.cat([prefix[:, 0], patches.mean(1)], dim=1) for patches, prefix in blocks]
        return torch.cat(parts, dim=1)
    tokens = vit.forward_features(images)
    if pooling == "cls_avg":  # MIM-Refiner's probe feature: [cls, mean of the patch tokens]
        return torch.cat([pooled_from_tokens(vit, tokens, "cls"), pooled_from_tokens(vit, tokens, "avg")], dim=1)
    return pooled_from_tokens(vit, tokens, pooling)


def pooled_from_tokens(vit, tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        if not vit.num_prefix_tokens:
            raise ConfigError("this backbone has no cls token: use pooling='avg'")
        return tokens[:, 0]
    if pooling != "avg":
        raise ConfigError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    return tokens[:, vit.num_prefix_tokens:].mean(1)


@torch.no_grad()
def extract(vit, loader, pooling: str = "default", device: str | None = None, cache: str | Path | None = None,
            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) for every batch {"image": normalised float or uint8, "label"} of `loader`. With
    `cache`, a finished extraction is written (atomically) to that .safetensors file and read back next time."""
    if cache and Path(cache).is_file():
        stored = load_file(cache)
        return stored["features"], stored["labels"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vit = vit.to(device).eval()
    mean = torch.tensor(vit.data_config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(vit.data_config["std"], device=device).view(1, 3, 1, 1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    feats, labels = [], []
    for batch in tqdm(loader, desc="features", disable=not progress):
        images = batch["image"].to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = (images.float() / 255 - mean) / std
        with autocast:
            feats.append(pooled(vit, images, pooling).float().cpu())
        labels.append(batch["label"].cpu())
    out = torch.cat(feats), torch.cat(labels)
    if cache:
        write_safetensors({"features": out[0], "labels": out[1]}, cache)
    return out
