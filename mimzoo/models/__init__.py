"""The shared ViT backbone registry (timm underneath, no writes to timm's global registry)."""
from __future__ import annotations

import re

from ..errors import ConfigError
from .masking import croco_mask, mae_masking, visible_ids
from .vit import IMAGENET_MEAN, IMAGENET_STD, ViT, gather_tokens

# timm's names and sizes; patch size comes from the name, anything else can be overridden.
ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
    "vit_2b": dict(embed_dim=2560, depth=24, num_heads=32),
}
NAMES = [f"{a}_patch{p}" for a in ARCHS for p in (8, 14, 16)]


def list_archs() -> list[str]:
    return list(NAMES)


def arch_config(name: str) -> dict:
    """ViT kwargs of a timm-style name such as vit_large_patch16."""
    m = re.fullmatch(r"(vit_\w+?)_patch(\d+)(?:_(\d+))?", name)
    if not m or m.group(1) not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(NAMES)} (or pass embed_dim/depth/"
                         f"num_heads explicitly)")
    cfg = dict(ARCHS[m.group(1)], patch_size=int(m.group(2)))
    if m.group(3):
        cfg["img_size"] = int(m.group(3))
    return cfg


def create_vit(name: str | None = None, **overrides) -> ViT:
    """`create_vit("vit_base_patch16", pos_embed="rope", class_token=False)`; with no name, overrides only."""
    cfg = arch_config(name) if name else {}
    cfg.update(overrides)
    return ViT(**cfg)


__all__ = ["ViT", "create_vit", "arch_config", "list_archs", "mae_masking", "croco_mask", "visible_ids",
           "gather_tokens", "IMAGENET_MEAN", "IMAGENET_STD"]
