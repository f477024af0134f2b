"""End-to-end image classification fine-tuning, MAE's protocol (Sec. A.3 of the paper, FINETUNE.md):
mean-pooled patch tokens + fc_norm, layer-wise lr decay, drop path, RandAugment, mixup/cutmix, label smoothing,
random erasing. Works on any zoo backbone."""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
import torchmetrics
from kornia.augmentation.auto import RandAugment
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from ..errors import ConfigError
from ..models import ViT
from ..optim import Optimization
from ..views import EvalView, FinetuneViews
from .base import Method

# parts of a classifier ViT that fine-tuning rebuilds (a pretrained encoder has none, or another task's)
CLASSIFIER_KEYS = ("head.", "fc_norm.")


@dataclass
class ClassifierOutput:
    loss: torch.Tensor
    logits: torch.Tensor


def classifier_backbone(backbone: ViT, num_classes: int, drop_path_rate: float, global_pool: str) -> tuple[ViT, list]:
    """Rebuild a pretrained encoder as MAE's fine-tuning ViT: with global_pool="avg" the final norm is replaced by
    fc_norm after pooling; the classifier (head, fc_norm) is kept when the encoder already has one of this shape
    (a fine-tuned checkpoint), else new with MAE's init (head: trunc normal std 2e-5). Returns (ViT, notes)."""
    cfg = dict(backbone._hub_mixin_config)
    avg = global_pool == "avg"
    cfg.update(num_classes=num_classes, drop_path_rate=drop_path_rate, global_pool=global_pool,
               fc_norm=avg or cfg.get("fc_norm", False), final_norm=cfg.get("final_norm", True) and not avg)
    if cfg.get("pos_embed") == "sincos":
        cfg["pos_embed"] = "learn"  # MAE fine-tunes the (loaded) table
    vit = ViT(**cfg)
    own, held = vit.state_dict(), backbone.state_dict()
    weights = {k: v for k, v in held.items() if k in own and own[k].shape == v.shape}
    missing = set(own) - set(weights) - {k for k in own if k.startswith(CLASSIFIER_KEYS)}
    if missing:
        raise ConfigError(f"pretrained backbone lacks {sorted(missing)} for fine-tuning")
    vit.load_state_dict(weights, strict=False)
    new = sorted({k.split(".")[0] for k in own if k.startswith(CLASSIFIER_KEYS) and k not in weights})
    if "head" in new:
        torch.nn.init.trunc_normal_(vit.head.weight, std=2e-5)
        torch.nn.init.zeros_(vit.head.bias)
    dropped = sorted({k.split(".")[0] for k in held if k not in own})
    notes = [f"new {', '.join(new)}"] if new else []
    return vit, notes + ([f"{', '.join(dropped)} dropped ({global_pool} pooling)"] if dropped else [])


class Classifier(Method):
    """What classifiers on a backbone share (fine-tuning, linear probe): uint8 batches turned into train or eval
    views on the device (the eval view is MAE's), top-1 / top-5 validation. Subclasses call
    `setup_classification` and define forward."""

    def setup_classification(self, num_classes: int, train_views: torch.nn.Module, image_size: int) -> None:
        mean, std = self.backbone.data_config["mean"], self.backbone.data_config["std"]
        self.train_views, self.eval_views = train_views, EvalView(image_size, mean, std)
        self.val_top1 = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.val_top5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=min(5, num_classes))

    def make_views(self, batch: dict) -> dict:
        """Training views crop inside each image's true size when the batch holds padded full images
        (`crop="full"`, "image_size"); evaluation takes the centre square the loader decodes."""
        if self.training:
            return {"image": self.train_views(batch["image"], sizes=batch.get("image_size")).images}
        return {"image": self.eval_views(batch["image"])}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.val_top1(logits, batch["label"])
        self.val_top5(logits, batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), batch_size=len(logits), sync_dist=True)
        self.log_dict({"val/top1": self.val_top1, "val/top5": self.val_top5}, prog_bar=True)


class Finetune(Classifier):
    """Fine-tune a backbone as a classifier, MAE's recipe (defaults: its ViT-B numbers: blr 5e-4, layer decay
    0.65, drop path 0.1, 100 epochs, warmup 5, batch 1024, wd 0.05, AdamW(0.9, 0.999), mixup 0.8, cutmix 1.0,
    smoothing 0.1, RandAugment(2, 9), random erasing 0.25).

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16.
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: the pretrained encoder (zoo name, path, `hf-hub:`); a fine-tuned classifier of `num_classes`
            classes keeps its head.
        num_classes: classes of the new head.
        global_pool: "avg" (mean of patch tokens + fc_norm, MAE's) or "token".
        drop_path_rate: stochastic depth of the fine-tuned encoder.
        image_size: training and evaluation resolution.
        mixup, cutmix, smoothing: timm's Mixup (off when both alphas are 0).
        randaug_n, randaug_m: RandAugment operations and magnitude (n 0 = off).
        reprob: random erasing probability.
        optim: optimisation (layer_decay 0.65, blr 5e-4, AdamW(0.9, 0.999), wd 0.05, 5 warmup epochs, min lr 1e-6).
    """

    name = "finetune"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_path_rate: float = 0.1,
        image_size: int = 224,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        smoothing: float = 0.1,
        randaug_n: int = 2,
        randaug_m: int = 9,
        reprob: float = 0.25,
        optim: Optimization = Optimization(blr=5e-4, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=5,
                                           min_lr=1e-6, layer_decay=0.65),
    ):
        super().__init__()
        self.save_hyperparameters()
        encoder = self.init_backbone(backbone, backbone_kwargs, weights)
        self.init_optim(optim)
        self.backbone, notes = classifier_backbone(encoder, num_classes, drop_path_rate, global_pool)
        if self.weights_file is not None:
            self._notes += notes
        mean, std = self.backbone.data_config["mean"], self.backbone.data_config["std"]
        # RandomResizedCrop(0.08-1, bicubic) + flip over each full image (`FinetuneViews`), then on the crops:
        steps = [RandAugment(n=randaug_n, m=randaug_m)] if randaug_n > 0 else []
        steps.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
        if reprob > 0:
            steps.append(K.RandomErasing(p=reprob, value=0.0))
        views = FinetuneViews(image_size, K.AugmentationSequential(*steps), scale=(0.08, 1.0), mean=mean, std=std)
        self.setup_classification(num_classes, views, image_size)
        self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                           num_classes=num_classes) if mixup > 0 or cutmix > 0 else None
        self.train_loss = SoftTargetCrossEntropy()
        self.load_file_parts()

    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        bb = config["backbone"]
        return {**super().converted_kwargs(config), "num_classes": bb["num_classes"],
                "global_pool": bb.get("global_pool", "avg")}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def training_loss(self, batch: dict) -> ClassifierOutput:
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, labels)
        else:
            targets = F.one_hot(labels, self.hparams.num_classes).float()
        logits = self(images)
        return ClassifierOutput(self.train_loss(logits, targets), logits)
