"""Pretraining methods: one LightningModule each, on the shared backbone and `Method` base."""
from __future__ import annotations

from .base import Method, warmup_cosine, weight_decay_groups
from .croco import MIMIC, CroCo, CroCoOutput
from .finetune import Finetune, layer_decay_groups
from .mae import MAE, MAEOutput

__all__ = ["Method", "MAE", "MAEOutput", "CroCo", "CroCoOutput", "MIMIC", "Finetune", "layer_decay_groups",
           "warmup_cosine", "weight_decay_groups", "pretrainer_from_converted"]


def _mae_from_converted(config: dict, overrides: dict) -> MAE:
    dec = config.get("decoder")
    if dec is None:
        raise ValueError("this MAE checkpoint holds the encoder only (the released mae_pretrain_vit_* files); "
                         "load it with model='backbone', or use the *_full / *_visualize zoo entries for the "
                         "decoder")
    norm_pix = config.get("norm_pix_loss")
    return MAE(backbone=config["backbone"], decoder_embed_dim=dec["embed_dim"], decoder_depth=dec["depth"],
               decoder_num_heads=overrides.get("decoder_num_heads") or dec["num_heads"],
               norm_pix_loss=True if norm_pix is None else bool(norm_pix),
               image_size=config["backbone"].get("img_size", 224))


def pretrainer_from_converted(config: dict, state_dict: dict, **overrides):
    """The method LightningModule for converted weights (upstream file, mimzoo folder or Lightning checkpoint)."""
    import importlib

    from ..loading import load_strict

    if "class_path" in config:  # written by a mimzoo method: Lightning checkpoint or save_pretrained folder
        module_name, _, cls_name = config["class_path"].rpartition(".")
        if not module_name.startswith("mimzoo."):  # a checkpoint never chooses arbitrary code to import
            raise ValueError(f"refusing to build {config['class_path']!r}: only mimzoo methods can be rebuilt")
        cls = getattr(importlib.import_module(module_name), cls_name)
        hp = {k: v for k, v in config.get("hyper_parameters", {}).items() if not k.startswith("_")}
        # rebuild from the saved backbone config: no second download of `pretrained` weights, exact architecture
        hp.update(backbone=config["backbone"], backbone_kwargs=None)
        if "pretrained" in hp:
            hp["pretrained"] = None
        model = cls(**hp)
    elif config.get("contents") == "finetuned":
        bb = config["backbone"]
        model = Finetune(backbone=bb, num_classes=bb["num_classes"], global_pool=bb.get("global_pool", "avg"),
                         image_size=bb.get("img_size", 224))
    elif config.get("method") == "mae":
        model = _mae_from_converted(config, overrides)
    elif config.get("method") in ("croco", "mimic"):
        dec = config["decoder"]
        if dec is None:
            raise ValueError("this checkpoint holds the encoder only; load it with model='backbone'")
        cls = CroCo if config["method"] == "croco" else MIMIC
        model = cls(backbone=config["backbone"], mask_ratio=config.get("mask_ratio", 0.9),
                    decoder_embed_dim=dec["embed_dim"], decoder_depth=dec["depth"],
                    decoder_num_heads=overrides.get("decoder_num_heads") or dec["num_heads"],
                    image_size=config["backbone"].get("img_size", 224),
                    norm_pix_loss=config.get("norm_pix_loss") is not False)
    else:
        raise NotImplementedError(
            f"model='pretrainer' is not available yet for {config.get('method')!r} checkpoints (its method is not "
            f"implemented in this version); model='backbone' loads the encoder")
    load_strict(model, state_dict, what=config.get("format", "checkpoint"))
    return model.eval()
