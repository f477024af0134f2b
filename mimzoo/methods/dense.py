"""Dense fine-tuning of any zoo backbone: monocular depth, semantic segmentation and surface normals, with a linear,
DPT or ConvNeXt head, a frozen or fine-tuned backbone and layer-wise lr decay (the MultiMAE protocols MIMIC
reports)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F

from ..data.dense import IGNORE_INDEX
from ..errors import ConfigError
from ..optim import Optimization
from ..tasks.colorize import dense_grid
from ..tasks.convnext_head import ConvNeXtAdapterHead
from ..tasks.dense import TASKS, berhu_loss, normal_loss, scale_crop, segmentation_metrics, silog_loss
from ..tasks.heads import DPTHead, LinearHead, default_hooks
from ..tasks.metrics import DepthMetrics, SurfaceNormalMetrics
from ..views import Augmentation
from .base import Method
from .pictures import save_epoch_picture


@dataclass
class DenseOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # depth in metres, class logits or unit normals, at the input resolution


class DenseFinetune(Method):
    """`task`: "depth" (metres; predicted as exp of the head's output; `depth_loss` "silog" = scale-invariant log
    or "berhu" = MultiMAE's), "segmentation"
    (cross-entropy, 255 ignored) or "normals" (unit vectors; L1 or angular loss).
    `head`: "dpt" on the blocks `hooks` (default: four equally spaced, ending at the last; raw block outputs as in
    MultiMAE, `norm_last_hook` puts the last one through the final norm as CroCo does), "convnext" (MultiMAE's
    ConvNeXt adapter on the raw last block, MIMIC's ADE20K head) or "linear" on the last layer (after the final
    norm). `freeze_backbone` trains the head only.

    Training views, on the device: horizontal flip (`hflip`), colour jitter (`color_jitter` = brightness,
    contrast, saturation, hue with probability `color_jitter_p`; `grayscale_p`), then `scale_crop` to
    `image_size` with a scale drawn from `crop_scale` (applied when the batch is larger than `image_size` or the
    scale range is not (1, 1)). Validation batches are used as they come.

    Defaults: MultiMAE's NYUv2 depth recipe for ViT-B, which MIMIC uses (AdamW lr 1e-4, wd 1e-4, layer decay 0.75,
    warmup, 256 px). Batches: {"image": uint8 (B, 3, H, W), <target>} with target "depth" (B, 1, H, W) (0 = no
    depth), "mask" (B, H, W) int64 or "normal" (B, 3, H, W), as `mimzoo.data.DenseDataModule` gives them.

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16
            (random init).
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: the backbone to fine-tune (zoo name, path in any format, `hf-hub:`): resized to `image_size`,
            without its classifier; a DenseFinetune checkpoint also gives its head.
        task, num_classes, head, hooks, feature_dim, last_dim, freeze_backbone, norm_last_hook: the task and head
            (above); `num_classes` for segmentation.
        image_size: the training crop (and the backbone's input size).
        drop_path_rate: stochastic depth of the backbone.
        depth_loss, normal_loss, variance_focus, max_depth: the losses (above); depth predictions are clamped to
            max_depth in validation.
        hflip, crop_scale, color_jitter, color_jitter_p, grayscale_p: training views (above).
        picture_every_n_epochs: prediction pictures every n validation epochs.
        optim: optimisation (AdamW(0.9, 0.999) lr 1e-4, wd 1e-4, layer decay 0.75, 1 warmup epoch, min lr 1e-6).
    """

    name = "dense_finetune"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        task: str = "depth",
        num_classes: int | None = None,
        head: str = "dpt",
        hooks: list[int] | None = None,
        feature_dim: int = 256,
        last_dim: int = 32,
        freeze_backbone: bool = False,
        norm_last_hook: bool = False,
        image_size: int = 256,
        drop_path_rate: float = 0.1,
        depth_loss: str = "silog",
        normal_loss: str = "l1",
        variance_focus: float = 0.85,
        max_depth: float = 10.0,
        hflip: bool = True,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        color_jitter: list[float] | None = (0.4, 0.4, 0.2, 0.1),
        color_jitter_p: float = 0.5,
        grayscale_p: float = 0.0,
        picture_every_n_epochs: int = 1,
        optim: Optimization = Optimization(blr=None, lr=1e-4, weight_decay=1e-4, betas=(0.9, 0.999),
                                           warmup_epochs=1, min_lr=1e-6, layer_decay=0.75),
    ):
        super().__init__()
        if task not in TASKS:
            raise ConfigError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if head not in ("dpt", "convnext", "linear"):
            raise ConfigError(f"head must be 'dpt', 'convnext' or 'linear', got {head!r}")
        if task == "segmentation" and not num_classes:
            raise ConfigError("segmentation needs num_classes (150 for ADE20K)")
        if depth_loss not in ("silog", "berhu"):
            raise ConfigError(f"depth_loss must be 'silog' or 'berhu', got {depth_loss!r}")
        if normal_loss not in ("l1", "angular"):
            raise ConfigError(f"normal_loss must be 'l1' or 'angular', got {normal_loss!r}")
        self.save_hyperparameters()
        # the backbone at the task's resolution, without a classifier
        self.init_backbone(backbone, backbone_kwargs, weights, img_size=image_size, drop_path_rate=drop_path_rate,
                           num_classes=0)
        self.init_optim(optim)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        # parts the head never reads get no gradient, which DDP (without find_unused_parameters) rejects
        unused = [self.backbone.fc_norm, self.backbone.head]
        if head != "linear" and not norm_last_hook:
            unused.append(self.backbone.norm)
        for module in unused:
            module.requires_grad_(False)
        depth = len(self.backbone.blocks)
        self.hooks = list(hooks) if hooks is not None else default_hooks(depth)
        if head == "dpt" and (len(self.hooks) != 4 or not all(0 <= h < depth for h in self.hooks)):
            raise ConfigError(f"DPT needs 4 hooks among blocks 0..{depth - 1}, got {self.hooks}")
        self.target_key, channels = TASKS[task]
        channels = channels or num_classes
        dim = self.backbone.embed_dim
        if head == "dpt":
            kind = "segmentation" if task == "segmentation" else "regression"
            self.head = DPTHead(dim, channels, kind, feature_dim=feature_dim, last_dim=last_dim)
        elif head == "convnext":
            self.head = ConvNeXtAdapterHead(dim, channels, patch_size=self.backbone.patch_embed.patch_size[0])
        else:
            self.head = LinearHead(dim, channels)
        mean, std = self.backbone.data_config["mean"], self.backbone.data_config["std"]
        self.normalize = K.Normalize(torch.tensor(mean), torch.tensor(std))
        steps = [K.ColorJitter(*color_jitter, p=color_jitter_p)] if color_jitter else []
        steps += [K.RandomGrayscale(p=grayscale_p)] if grayscale_p else []
        self.jitter = Augmentation(K.AugmentationSequential(*steps)) if steps else None
        if task == "depth":
            self.val_metrics = DepthMetrics()
        elif task == "normals":
            self.val_metrics = SurfaceNormalMetrics()
        else:
            self.val_metrics = segmentation_metrics(num_classes)
        self.load_file_parts()

    # -- model ------------------------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Token maps (B, D, h, w) at the hooks."""
        last = len(self.backbone.blocks) - 1
        linear = self.hparams.head == "linear"
        take = self.hooks if self.hparams.head == "dpt" else [last]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.freeze_backbone):
            blocks = sorted(set(take))
            maps = self.backbone.forward_intermediates(images, indices=blocks, intermediates_only=True,
                                                       stop_early=True)
            maps = [maps[blocks.index(b)] for b in take]
            if take[-1] == last and (linear or self.hparams.norm_last_hook):
                maps[-1] = self.backbone.norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> depth in metres (B, 1, H, W), class logits (B, C, H, W) or unit
        normals (B, 3, H, W)."""
        out = self.head(self.features(images), images.shape[-2:])
        if self.hparams.task == "depth":
            return torch.exp(out.float().clamp(max=math.log(self.hparams.max_depth) + 1))  # no overflow early on
        if self.hparams.task == "normals":
            return F.normalize(out.float(), dim=1)
        return out

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.backbone.eval()  # a frozen backbone has no dropout/drop path to run
        return self

    # -- data -------------------------------------------------------------------------------------------------
    def make_views(self, batch: dict) -> dict:
        images, target = batch["image"].float() / 255, batch[self.target_key]
        if self.training:
            if self.hparams.hflip:
                images, target = self.flip(images, target)
            if self.jitter is not None:
                images = self.jitter(images)
        images = self.normalize(images)
        size = (self.hparams.image_size,) * 2
        if self.training and (tuple(images.shape[-2:]) != size or tuple(self.hparams.crop_scale) != (1.0, 1.0)):
            images, target = scale_crop(images, target, size, self.hparams.crop_scale, self.target_key)
        return {"image": images, self.target_key: target}

    def flip(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Random horizontal flip of image and target together, on the device; a flipped normal map also
        mirrors its x component."""
        flip = torch.rand(images.shape[0], device=images.device) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        flipped = target.flip(-1)
        if self.target_key == "normal":
            flipped = flipped * torch.tensor([-1.0, 1.0, 1.0], device=target.device).view(1, 3, 1, 1)
        return images, torch.where(flip.view(-1, *[1] * (target.ndim - 1)), flipped, target)

    # -- steps ------------------------------------------------------------------------------------------------
    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        task = self.hparams.task
        if task == "depth" and self.hparams.depth_loss == "berhu":
            return berhu_loss(pred, target)
        if task == "depth":
            return silog_loss(pred, target, self.hparams.variance_focus)
        if task == "normals":
            return normal_loss(pred, target, self.hparams.normal_loss)
        return F.cross_entropy(pred.float(), target, ignore_index=IGNORE_INDEX)

    def training_loss(self, batch: dict) -> DenseOutput:
        pred = self(batch["image"])
        return DenseOutput(self.loss(pred, batch[self.target_key]), pred)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if batch["image"].shape[0] == 0:  # every image of the batch was corrupt (already reported)
            return
        pred, target = self(batch["image"]), batch[self.target_key]
        self.log("val/loss", self.loss(pred, target), batch_size=len(pred), sync_dist=True)
        if self.hparams.task == "depth":
            pred = pred.clamp(1e-3, self.hparams.max_depth)
        elif self.hparams.task == "segmentation":
            pred = pred.argmax(1)
        self.val_metrics.update(pred, target)
        if batch_idx == 0:
            mean = torch.tensor(self.backbone.data_config["mean"], device=pred.device).view(1, 3, 1, 1)
            std = torch.tensor(self.backbone.data_config["std"], device=pred.device).view(1, 3, 1, 1)
            grid = dense_grid(batch["image"] * std + mean, target, pred, self.hparams.task,
                              max_depth=self.hparams.max_depth)
            save_epoch_picture(self, grid, "predictions")

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, prog_bar=True, sync_dist=False)
        self.val_metrics.reset()
