"""Linear probing of a frozen backbone, MAE's protocol (paper Table 10, FINETUNE.md, `main_linprobe.py`).

The recipe: pooled feature (cls token after the final norm by default) -> parameter-free BatchNorm1d(eps 1e-6) ->
Linear (trunc-normal std 0.01, zero bias); LARS with momentum 0.9, trust coefficient 0.001, weight decay 0, no decay
and no lr adaptation for parameters with ndim <= 1; lr = blr * batch / 256 with blr 0.1 at batch 16384, 90 epochs,
10 of per-step linear warmup then half-cycle cosine to 0; cross-entropy; RandomResizedCrop(224, 0.08-1, bicubic) +
flip for training, resize 256 + centre crop 224 for evaluation. `mimzoo.tasks.linear` trains the same head on
cached features (the fast estimate of `mimzoo probe linear`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models import ViT
from ..optim import Optimization
from ..tasks.linear import ProbeHead
from ..tasks.pooling import pooled
from ..views import MAEViews
from .finetune import Classifier, ClassifierOutput

POOLINGS = ("cls", "avg", "default")


class LinearProbe(Classifier):
    """A linear classifier on a frozen backbone, MAE's linear-probe protocol (defaults = its ViT-B numbers).

    The backbone has no gradients, is not in the optimizer and always runs in eval mode. MAE keeps the whole
    model in train mode while probing (issue #54), which only matters for the head's BatchNorm (batch statistics
    in training, running statistics in evaluation, as here): its ViT has no dropout or drop path at probe time, so
    eval mode gives the same features, and it keeps them deterministic for backbones built with drop path.
    Checkpoints hold the whole state dict (backbone included), so `mimzoo.load(ckpt)` gives the backbone and
    `mimzoo.load(ckpt, model="pretrainer")` the probe without fetching `weights` again.

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16
            (random init: a baseline).
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: the backbone to probe (zoo name, path, `hf-hub:`), resized to `image_size`.
        num_classes: classes of the head.
        pooling: "cls" (the cls token after the final norm, MAE's default), "avg" (mean of the patch tokens after
            the final norm; the only choice without a cls token, e.g. CroCo) or "default" (the backbone's own
            pooled feature, e.g. SiameseIM's `--global_pool` probe: LayerNorm of the patch mean).
        image_size: training and evaluation resolution.
        optim: optimisation (LARS, blr 0.1, wd 0, momentum 0.9, trust 1e-3, 10 warmup epochs, min lr 0).
    """

    name = "linear_probe"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        num_classes: int = 1000,
        pooling: str = "cls",
        image_size: int = 224,
        optim: Optimization = Optimization(optimizer="lars", blr=0.1, weight_decay=0.0, momentum=0.9,
                                           trust_coefficient=1e-3, warmup_epochs=10, min_lr=0.0),
    ):
        super().__init__()
        self.save_hyperparameters()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        encoder = self.init_backbone(backbone, backbone_kwargs, weights, img_size=image_size, num_classes=0)
        self.init_optim(optim)
        if pooling == "cls" and not encoder.num_prefix_tokens:
            raise ConfigError("this backbone has no cls token: use pooling='avg'")
        self.backbone: ViT = encoder.requires_grad_(False).eval()
        self.head = ProbeHead(encoder.embed_dim, num_classes)
        mean, std = encoder.data_config["mean"], encoder.data_config["std"]
        # MAE's probe trains on RandomResizedCrop(0.08-1) + flip: MAE's pretraining view at another scale
        self.setup_classification(num_classes, MAEViews(image_size, scale=(0.08, 1.0), mean=mean, std=std),
                                  image_size)
        self.load_file_parts()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return pooled(self.backbone, images, self.hparams.pooling).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def training_loss(self, batch: dict) -> ClassifierOutput:
        logits = self(batch["image"])
        return ClassifierOutput(F.cross_entropy(logits, batch["label"]), logits)
