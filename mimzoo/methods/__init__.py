"""Methods: one LightningModule each (pretraining and downstream), on the shared backbone and the `Method` base.

`METHODS` is the registry: name -> class. `mimzoo.load(..., model="pretrainer")` rebuilds a checkpoint's method
through it; adding a method is its own file plus one entry here.
"""
from __future__ import annotations

from ..errors import UnknownNameError
from ..loading import Converted
from .base import LossOutput, Method
from .croco import MIMIC, CroCo, CroCoOutput
from .dense import DenseFinetune, DenseOutput
from .finetune import ClassifierOutput, Finetune
from .linear_probe import LinearProbe
from .mae import MAE, MAEOutput
from .mim_refiner import MIMRefiner, MIMRefinerOutput
from .semanticmim import SemanticMIM, SemanticMIMOutput
from .siameseim import SiameseIM, SiameseIMOutput

METHODS: dict[str, type[Method]] = {m.name: m for m in (MAE, CroCo, MIMIC, SiameseIM, MIMRefiner, SemanticMIM, Finetune,
                                                             LinearProbe, DenseFinetune)}

__all__ = ["METHODS", "Method", "MAE", "MAEOutput", "CroCo", "CroCoOutput", "MIMIC", "Finetune", "LinearProbe",
           "DenseFinetune", "SiameseIM", "SiameseIMOutput",
           "MIMRefiner", "MIMRefinerOutput", "SemanticMIM", "SemanticMIMOutput", "LossOutput", "ClassifierOutput",
           "DenseOutput",
           "method_for", "pretrainer"]


def method_for(config: dict) -> type[Method]:
    """The registered class that rebuilds a converted file: its `method` field (upstream converters and mimzoo
    checkpoints both write it; checkpoints from before the field existed name their class in `class_path`)."""
    name = config.get("method")
    if name in METHODS:
        return METHODS[name]
    by_class = {cls.__name__: cls for cls in METHODS.values()}
    legacy = str(config.get("class_path", "")).rpartition(".")[2]
    if legacy in by_class:
        return by_class[legacy]
    if name is None:  # a backbone's own file (ViT.save_pretrained, timm, an encoder-only release)
        raise UnknownNameError("model='pretrainer' needs a file that holds a method; this one holds a backbone only "
                               "(no decoder or heads): model='backbone' loads it")
    raise UnknownNameError(
        f"model='pretrainer' is not available for {name!r} checkpoints: mimzoo has no such method yet (it has "
        f"{', '.join(METHODS)}); model='backbone' loads the encoder")


def pretrainer(converted: Converted, **overrides) -> Method:
    """The method LightningModule of a converted file, with every part it holds, strictly loaded, in eval mode."""
    return method_for(converted.config).from_converted(converted, **overrides)
