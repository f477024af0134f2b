"""Dense fine-tuning of any zoo backbone: monocular depth, semantic segmentation and surface normals, with a linear
or DPT head, a frozen or fine-tuned backbone and layer-wise lr decay (the MultiMAE protocols MIMIC reports)."""
from __future__ import annotations

import math

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..data.dense import IGNORE_INDEX
from ..methods.base import Augmentation, Method, build_backbone, weight_decay_groups
from ..methods.finetune import layer_decay_groups
from ..methods.pictures import save_epoch_picture
from ..models import ViT, arch_config
from .colorize import dense_grid
from .convnext_head import ConvNeXtAdapterHead
from .heads import DPTHead, LinearHead, default_hooks
from .metrics import DepthMetrics, SurfaceNormalMetrics

TASKS = {"depth": ("depth", 1), "segmentation": ("mask", None), "normals": ("normal", 3)}


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of x over the valid pixels, without boolean indexing (which would wait for the device)."""
    return torch.where(valid, x, 0).sum() / valid.sum().clamp(min=1)


def silog_loss(pred: torch.Tensor, target: torch.Tensor, variance_focus: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014 in the form of BTS/AdaBins): 10 * sqrt(mean(g^2) -
    variance_focus * mean(g)^2), g = log(pred) - log(target) over the valid pixels (target > 0) of the batch."""
    valid = target > 0
    g = torch.log(pred.clamp(min=1e-6)) - torch.log(torch.where(valid, target, 1))
    return 10 * (masked_mean(g ** 2, valid) - variance_focus * masked_mean(g, valid) ** 2).clamp(min=1e-12).sqrt()


def berhu_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reverse Huber (Laina et al. 2016), MultiMAE's NYUv2 loss: |e| below c = 0.2 max|e| (over the batch's valid
    pixels), (e^2 + c^2) / 2c above; mean over the valid pixels."""
    valid = target > 0
    e = torch.where(valid, pred - target, 0).abs()
    c = (0.2 * e.max().detach()).clamp(min=1e-5)
    return masked_mean(torch.where(e < c, e, (e ** 2 + c ** 2) / (2 * c)), valid)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Over the valid pixels (target with non-zero norm) of unit-normalised predictions: mean absolute difference of
    the vectors ("l1", MultiMAE's Taskonomy loss) or mean angle in radians ("angular")."""
    valid = target.norm(dim=1) > 0
    pred = F.normalize(pred, dim=1)
    if kind == "l1":
        return masked_mean((pred - target).abs().sum(1), valid) / 3
    cos = (pred * target).sum(1).clamp(-1 + 1e-6, 1 - 1e-6)  # acos has an infinite slope at +-1
    return masked_mean(torch.acos(cos), valid)


def scale_crop(images: torch.Tensor, target: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
               key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, rescale by a factor drawn from `scale` and cut a random `size` window (MultiMAE's RandomCrop
    after SmallestMaxSize for NYUv2; large-scale jitter (0.1, 2.0) + pad + RandomCrop for ADE20K), in one
    `grid_sample` on the device. The image is sampled bilinearly and padded with 0 (the mean colour after
    normalisation), the target by nearest neighbour and padded as invalid (depth / normal 0, label 255)."""
    B, _, H, W = images.shape
    device = images.device
    s = torch.empty(B, 1, 1, device=device).uniform_(*scale)
    # top-left of the window in the rescaled frame; windows larger than the frame keep it at the top left
    # (whole pixels, so that at scale 1 the window is an exact crop)
    oy = (torch.rand(B, 1, 1, device=device) * ((H * s - size[0]).clamp(min=0).floor() + 1)).floor()
    ox = (torch.rand(B, 1, 1, device=device) * ((W * s - size[1]).clamp(min=0).floor() + 1)).floor()
    ys = (torch.arange(size[0], device=device).view(1, -1, 1) + 0.5 + oy) / s  # source pixel coordinates
    xs = (torch.arange(size[1], device=device).view(1, 1, -1) + 0.5 + ox) / s
    grid = torch.stack([(2 * xs / W - 1).expand(B, *size), (2 * ys / H - 1).expand(B, *size)], dim=-1)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if key == "mask":
        inside = ((ys < H) & (xs < W)).expand(B, *size)
        labels = F.grid_sample(target[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
        return images, torch.where(inside, labels, IGNORE_INDEX)
    return images, F.grid_sample(target, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def segmentation_metrics(num_classes: int) -> MetricCollection:
    """mIoU over the classes present in prediction or target (mmseg's convention) and pixel accuracy, accumulated
    over the whole dataset; label 255 is ignored."""
    return MetricCollection({
        "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE_INDEX),
        "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)})


def is_arch_name(name: str) -> bool:
    try:
        arch_config(name)
    except ValueError:
        return False
    return True


def dense_backbone(backbone: str | dict, image_size: int, drop_path_rate: float,
                   backbone_kwargs: dict | None = None) -> ViT:
    """A zoo name or checkpoint (weights through `mimzoo.load`, position table resampled to `image_size`), an
    architecture name (random init) or a saved config dict (rebuilding a fine-tuned checkpoint)."""
    kwargs = dict(backbone_kwargs or {})
    if isinstance(backbone, dict) or is_arch_name(backbone):
        kwargs.setdefault("img_size", image_size)
        return build_backbone(backbone, {**kwargs, "drop_path_rate": drop_path_rate})
    from ..loading import AFTER, CONSTRUCTOR, HINTS, load

    passed = {k: v for k, v in kwargs.items() if k in HINTS | CONSTRUCTOR | AFTER}
    vit = load(backbone, **{"img_size": image_size, "drop_path_rate": drop_path_rate, "num_classes": 0, **passed})
    # architecture kwargs (a recipe written for a random-init model) must agree with the weights
    config = vit._hub_mixin_config
    clash = {k: f"{v} (the weights have {config.get(k)})" for k, v in kwargs.items()
             if k not in passed and config.get(k) != v}
    if clash:
        raise ValueError(f"backbone_kwargs {clash} disagree with the architecture of {backbone}: drop them "
                         f"(the weights decide the architecture)")
    return vit


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
    """

    def __init__(
        self,
        task: str = "depth",
        backbone: str | dict = "mae_vit_base_patch16",
        backbone_kwargs: dict | None = None,
        num_classes: int | None = None,
        head: str = "dpt",
        hooks: list[int] | None = None,
        feature_dim: int = 256,
        last_dim: int = 32,
        freeze_backbone: bool = False,
        norm_last_hook: bool = False,
        image_size: int = 256,
        drop_path_rate: float = 0.1,
        layer_decay: float = 0.75,
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
        blr: float | None = None,
        lr: float | None = 1e-4,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1,
        min_lr: float = 1e-6,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        if head not in ("dpt", "convnext", "linear"):
            raise ValueError(f"head must be 'dpt', 'convnext' or 'linear', got {head!r}")
        if task == "segmentation" and not num_classes:
            raise ValueError("segmentation needs num_classes (150 for ADE20K)")
        if depth_loss not in ("silog", "berhu"):
            raise ValueError(f"depth_loss must be 'silog' or 'berhu', got {depth_loss!r}")
        if normal_loss not in ("l1", "angular"):
            raise ValueError(f"normal_loss must be 'l1' or 'angular', got {normal_loss!r}")
        self.save_hyperparameters()
        self.backbone = dense_backbone(backbone, image_size, drop_path_rate, backbone_kwargs)
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
            raise ValueError(f"DPT needs 4 hooks among blocks 0..{depth - 1}, got {self.hooks}")
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

    def optimizer_groups(self) -> list[dict]:
        groups = layer_decay_groups(self.backbone, self.hparams.weight_decay, self.hparams.layer_decay)
        for g in groups:
            g.pop("names")
        return groups + weight_decay_groups(self.head, self.hparams.weight_decay)

    # -- data -------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if batch["image"].dtype != torch.uint8:
            return batch
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
        return {**batch, "image": images, self.target_key: target}

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

    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.loss(self(batch["image"]), batch[self.target_key])

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
