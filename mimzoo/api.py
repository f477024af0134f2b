"""The public facade: `mimzoo.load` and `mimzoo.list_models`. Above every other layer: it reads a checkpoint through
`loading` and, for model="pretrainer", rebuilds the method through the registry `mimzoo.methods.METHODS`."""
from __future__ import annotations

import os

from torch import nn

from . import cards, loading
from .errors import ConfigError
from .methods import pretrainer
from .zoo import list_models

__all__ = ["load", "list_models"]

MODELS = ("backbone", "pretrainer")


def load(name_or_path: str | os.PathLike, *, model: str = "backbone", format: str | None = None,
         cache_dir: str | None = None, progress: bool = True, **overrides) -> nn.Module:
    """Load a zoo name, a local file or folder (any supported format), or `hf-hub:org/repo[@revision]`.

    Args:
        name_or_path: what to load (see docs/loading.md).
        model: "backbone" -> a `mimzoo.models.ViT` in eval mode; "pretrainer" -> the method's LightningModule with
            every part the file holds (decoder, heads), in eval mode, ready to reconstruct or to resume.
        format: force a converter (default: detected from the keys, or the zoo entry's).
        cache_dir: download cache (default `$MIMZOO_CACHE`, else the Hugging Face cache).
        progress: show download progress.
        overrides: num_heads / decoder_num_heads (when the weights cannot tell), drop_path_rate, global_pool,
            dynamic_img_size, mean, std, img_size (resamples the position table), num_classes (a new classifier;
            0 drops one), pretraining_norm (True: keep the pretraining final norm that the downstream backbone
            drops, SemanticMIM's VOC linear segmentation features).
    """
    if model not in MODELS:
        raise ConfigError(f"model must be one of {MODELS}, got {model!r}")
    allowed = loading.HINTS | loading.BEHAVIOUR | loading.AFTER | loading.FILE_OPTIONS
    unknown = set(overrides) - allowed
    if unknown:
        raise ConfigError(f"unknown override(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    hints = {k: overrides.pop(k) for k in loading.HINTS & set(overrides)}
    converted = loading.read(name_or_path, format=format, cache_dir=cache_dir, progress=progress, **hints)
    built = pretrainer(converted, **overrides) if model == "pretrainer" else loading.backbone(converted, **overrides)
    # where the weights came from travels into every folder saved from them (licence, source: `mimzoo.cards`)
    built.provenance = cards.provenance(converted.config, converted.source)
    return built
