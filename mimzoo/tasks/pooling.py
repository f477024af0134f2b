"""The features a probe reads from a backbone: which token(s), before or after which norm (`pooled`)."""
from __future__ import annotations

import torch

from ..errors import ConfigError

POOLINGS = ("default", "cls", "cls_prenorm", "cls_avg", "cls_last4", "cls_avg_last4", "avg", "proxies")


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")


def pooled(vit, images: torch.Tensor, pooling: str) -> torch.Tensor:
    """'cls': the cls token after the final norm (MAE's linear probe, DINO's k-NN), 'cls_prenorm': the last block's
    cls token before the final norm (the few-shot feature of MSN, SiameseIM and MIM-Refiner), 'avg': mean of the
    final-normed patch tokens (CroCo, which has no cls token), 'default': what the model's own forward returns
    (its converter sets the pooling of the checkpoint's paper). MIM-Refiner's probe grid also uses 'cls_avg'
    ([cls, avg] after the final norm), 'cls_last4' (the raw cls tokens of the last 4 blocks, concatenated) and
    'cls_avg_last4' ([cls, avg] of each of the last 4 raw block outputs). 'proxies': the mean of all prefix tokens
    through the backbone's fc_norm, as its own average pooling is (SemanticMIM's `cls_token` feature: its P
    proxies are equals, unlike a cls token and registers)."""
    check_pooling(pooling)
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
    if pooling == "proxies":
        if not vit.num_prefix_tokens:
            raise ConfigError("this backbone has no prefix (proxy) tokens: use pooling='avg'")
        return vit.fc_norm(tokens[:, :vit.num_prefix_tokens].mean(1))
    if pooling != "avg":
        raise ConfigError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
    return tokens[:, vit.num_prefix_tokens:].mean(1)


def model_input(vit, images: torch.Tensor) -> torch.Tensor:
    """A batch as the backbone takes it: uint8 images scaled to [0, 1] and normalised with the backbone's own
    mean and std; float images are taken as already normalised."""
    if images.dtype != torch.uint8:
        return images
    mean = images.new_tensor(vit.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(vit.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std
