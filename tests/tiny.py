"""The tiny models the tests build, defined once: a 2-block ViT-Tiny on 32 px images (patch 8) and, per method,
the smallest parts and the settings a CPU test wants (no warmup, no heavy augmentation). Tests override what they
study: `tiny("mae", norm_pix_loss=False)`, `tiny(CroCo, backbone_kwargs={"pos_embed": "sincos"})`."""
from __future__ import annotations

import torch

from mimzoo.methods import METHODS, Method

TINY_VIT = {"depth": 2, "img_size": 32, "patch_size": 8}  # on vit_tiny_patch16: 192 wide, 3 heads
DECODER = {"decoder_embed_dim": 64, "decoder_depth": 1, "decoder_num_heads": 2}
PER_METHOD = {
    "mae": {**DECODER, "image_size": 32},
    "croco": {**DECODER, "image_size": 32},
    "mimic": {**DECODER, "image_size": 32},
    "finetune": {"num_classes": 10, "image_size": 32, "mixup": 0.0, "cutmix": 0.0, "randaug_n": 0, "reprob": 0.0,
                 "drop_path_rate": 0.0},
    "siameseim": {"decoder_embed_dim": 64, "decoder_num_heads": 2, "projector_depth": 1, "predictor_depth": 1,
                  "image_size": 32, "num_masked": 9, "crop_scale": (0.2, 1.0)},
    "mim_refiner": {"head_blocks": [0], "output_dim": 16, "proj_hidden_dim": 32, "pred_hidden_dim": 32,
                    "queue_size": 32, "image_size": 32, "local_size": 16, "num_local_views": 2, "ema_momentum": 0.9},
    "semanticmim": {"backbone_kwargs": {**TINY_VIT, "patch_size": 16}, "num_proxies": 2, "image_size": 32,
                    "mask_ratio": 0.75},  # patch 16: HOG's cells and Gaussian window
    "linear_probe": {"num_classes": 10, "image_size": 32},
    "dense_finetune": {"image_size": 32, "feature_dim": 32, "drop_path_rate": 0.0, "hooks": [0, 0, 1, 1]},
}


def tiny_vit_kwargs(**overrides) -> dict:
    """backbone + backbone_kwargs of the tiny ViT."""
    return {"backbone": "vit_tiny_patch16", "backbone_kwargs": {**TINY_VIT, **overrides}}


def tiny(method: str | type[Method], *, backbone_kwargs: dict | None = None, optim: dict | None = None,
         seed: int = 0, **kwargs) -> Method:
    """A tiny, seeded instance of a registered method. With `weights=...` the architecture comes from the file
    (no tiny backbone is asked for)."""
    cls = METHODS[method] if isinstance(method, str) else method
    args = {} if "weights" in kwargs else tiny_vit_kwargs(**(backbone_kwargs or {}))
    if "weights" in kwargs and backbone_kwargs:
        args["backbone_kwargs"] = backbone_kwargs
    parts = PER_METHOD[cls.name].items()  # with weights, the file's parts keep their own size
    args.update({k: v for k, v in parts if "weights" not in kwargs or not k.startswith("decoder_")})
    args.update(kwargs)
    args["optim"] = {"warmup_epochs": 0, **(optim or {})}
    torch.manual_seed(seed)
    return cls(**args)
