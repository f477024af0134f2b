"""End-to-end image classification fine-tuning, MAE's protocol (Sec. A.3 of the paper, FINETUNE.md):
mean-pooled patch tokens + fc_norm, layer-wise lr decay, drop path, RandAugment, mixup/cutmix, label smoothing,
random erasing. Works on any zoo backbone."""
from __future__ import annotations

import re

import kornia.augmentation as K
import torch
import torch.nn.functional as F
import torchmetrics
from kornia.augmentation.auto import RandAugment
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from ..models import ViT
from .base import Augmentation, Method, pretrained_or_built


def layer_id(name: str, num_layers: int) -> int:
    """BEiT/MAE layer index: embeddings 0, block i -> i + 1, everything after the blocks num_layers."""
    if name in ("cls_token", "pos_embed", "reg_token") or name.startswith("patch_embed"):
        return 0
    if m := re.match(r"blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    return num_layers


def layer_decay_groups(vit: ViT, weight_decay: float, layer_decay: float, prefix: str = "") -> list[dict]:
    """MAE's `param_groups_lrd`: lr_scale = layer_decay^(num_layers - layer_id), num_layers = depth + 1; no weight
    decay on 1-D tensors and on the position table and tokens (timm's `no_weight_decay`)."""
    num_layers = len(vit.blocks) + 1
    skip = vit.no_weight_decay()
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in skip)
        lid = layer_id(name, num_layers)
        g = groups.setdefault((lid, decay), {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
                                              "lr_scale": layer_decay ** (num_layers - lid)})
        g["params"].append(p)
        g["names"].append(prefix + name)
    return [groups[k] for k in sorted(groups)]


def classifier_backbone(backbone: ViT, num_classes: int, drop_path_rate: float, global_pool: str) -> ViT:
    """Rebuild a pretrained encoder as MAE's fine-tuning ViT: with global_pool="avg" the final norm is replaced by
    fc_norm after pooling; a fresh head with MAE's init (trunc normal, std 2e-5)."""
    cfg = dict(backbone._hub_mixin_config)
    avg = global_pool == "avg"
    cfg.update(num_classes=num_classes, drop_path_rate=drop_path_rate, global_pool=global_pool,
               fc_norm=avg or cfg.get("fc_norm", False), final_norm=cfg.get("final_norm", True) and not avg)
    if cfg.get("pos_embed") == "sincos":
        cfg["pos_embed"] = "learn"  # MAE fine-tunes the (loaded) table
    vit = ViT(**cfg)
    own = vit.state_dict()
    weights = {k: v for k, v in backbone.state_dict().items() if k in own and not k.startswith(("head.", "fc_norm."))
               and own[k].shape == v.shape}
    missing = set(own) - set(weights) - {k for k in own if k.startswith(("head.", "fc_norm."))}
    if missing:
        raise ValueError(f"pretrained backbone lacks {sorted(missing)} for fine-tuning")
    vit.load_state_dict(weights, strict=False)
    torch.nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    torch.nn.init.zeros_(vit.head.bias)
    return vit


def eval_views(image_size: int, mean, std) -> Augmentation:
    """MAE's evaluation transform on the device: resize the short side to image_size / 0.875 (bicubic), centre
    crop image_size (256 -> 224), normalise."""
    return Augmentation(torch.nn.Sequential(K.Resize(int(image_size / 0.875), resample="bicubic", side="short"),
                                            K.CenterCrop(image_size), K.Normalize(torch.tensor(mean), torch.tensor(std))))


class Classifier(Method):
    """What classifiers on a backbone share (fine-tuning, linear probe): uint8 batches turned into train or eval
    views on the device, top-1 / top-5 validation. Subclasses call `setup_classification` and define forward."""

    def setup_classification(self, num_classes: int, train_views: Augmentation, eval_views: Augmentation) -> None:
        self.train_views, self.eval_views = train_views, eval_views
        self.val_top1 = torchmetrics.Accuracy("multiclass", num_classes=num_classes)
        self.val_top5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=min(5, num_classes))

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if batch["image"].dtype == torch.uint8:
            views = self.train_views if self.training else self.eval_views
            batch = {**batch, "image": views(batch["image"].float() / 255)}
        return batch

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.val_top1(logits, batch["label"])
        self.val_top5(logits, batch["label"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), batch_size=len(logits), sync_dist=True)
        self.log_dict({"val/top1": self.val_top1, "val/top5": self.val_top5}, prog_bar=True)


class Finetune(Classifier):
    """`backbone` is a zoo name, a checkpoint path or an architecture name (random init).

    Defaults: MAE's ViT-B recipe (blr 5e-4, layer decay 0.65, drop path 0.1, 100 epochs, warmup 5, batch 1024,
    wd 0.05, AdamW(0.9, 0.999), mixup 0.8, cutmix 1.0, smoothing 0.1, RandAugment(2, 9), random erasing 0.25).
    """

    def __init__(
        self,
        backbone: str | dict = "vit_base_patch16",
        backbone_kwargs: dict | None = None,
        pretrained: str | None = None,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_path_rate: float = 0.1,
        layer_decay: float = 0.65,
        image_size: int = 224,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        smoothing: float = 0.1,
        randaug_n: int = 2,
        randaug_m: int = 9,
        reprob: float = 0.25,
        blr: float = 5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5,
        min_lr: float = 1e-6,
    ):
        super().__init__()
        self.save_hyperparameters()
        encoder = pretrained_or_built(backbone, backbone_kwargs, pretrained)
        self.backbone = classifier_backbone(encoder, num_classes, drop_path_rate, global_pool)
        mean, std = self.backbone.data_config["mean"], self.backbone.data_config["std"]
        steps = [K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0), resample="bicubic"),
                 K.RandomHorizontalFlip()]
        if randaug_n > 0:
            steps.append(RandAugment(n=randaug_n, m=randaug_m))
        steps.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
        if reprob > 0:
            steps.append(K.RandomErasing(p=reprob, value=0.0))
        self.setup_classification(num_classes, Augmentation(K.AugmentationSequential(*steps)),
                                  eval_views(image_size, mean, std))
        self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=smoothing,
                           num_classes=num_classes) if mixup > 0 or cutmix > 0 else None
        self.train_loss = SoftTargetCrossEntropy()

    def optimizer_groups(self) -> list[dict]:
        groups = layer_decay_groups(self.backbone, self.hparams.weight_decay, self.hparams.layer_decay)
        for g in groups:
            g.pop("names")
        return groups

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def training_loss(self, batch: dict):
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None and images.shape[0] % 2 == 0:
            images, targets = self.mixup(images, labels)
        else:
            targets = F.one_hot(labels, self.hparams.num_classes).float()
        return self.train_loss(self(images), targets)
