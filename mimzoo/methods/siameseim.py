"""SiameseIM (Tao et al., CVPR 2023): from a block-masked view 1, predict the momentum target's dense features of
another view of the same image, every view-2 patch queried at its position relative to view 1; UniGrad loss."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..models import masking
from ..models.decoders import SiameseDecoder
from ..models.losses import unigrad_loss
from ..models.pos_embed import sincos_2d
from ..optim import Optimization, ema_update_
from ..views import RelativeBoxes, TwoCropViews
from .base import Method


@dataclass
class SiameseIMOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, N, Dd) the predictor's output for every view-2 patch
    target: torch.Tensor  # (B, N, Dd) the momentum projector's output on view 2 (before the loss's LayerNorm)
    mask: torch.Tensor  # (B, N) bool, True = removed from view 1
    latent: torch.Tensor  # (B, 1 + K, D) the online encoder's output on [cls, visible view-1 patches]


class MomentumTarget(nn.Module):
    """The momentum copy of the online encoder (patch embedding, cls token, blocks) and projector (embed +
    projector blocks); it encodes the full view 2 with the online (fixed) position table. Its BatchNorm statistics
    are its own; its parameters follow the online ones by `update`."""

    def __init__(self, backbone: nn.Module, decoder: SiameseDecoder):
        super().__init__()
        self.patch_embed = copy.deepcopy(backbone.patch_embed)
        self.cls_token = nn.Parameter(backbone.cls_token.detach().clone())
        self.blocks = copy.deepcopy(backbone.blocks)
        self.embed = copy.deepcopy(decoder.embed)
        self.projector = copy.deepcopy(decoder.projector)
        self.requires_grad_(False)

    @staticmethod
    def online(backbone: nn.Module, decoder: SiameseDecoder) -> list[torch.Tensor]:
        """The online parameters this target copies, in the order of `copies`."""
        return [*backbone.patch_embed.parameters(), backbone.cls_token, *backbone.blocks.parameters(),
                *decoder.embed.parameters(), *decoder.projector.parameters()]

    def copies(self) -> list[torch.Tensor]:
        return [*self.patch_embed.parameters(), self.cls_token, *self.blocks.parameters(), *self.embed.parameters(),
                *self.projector.parameters()]

    @torch.no_grad()
    def copy_from(self, backbone: nn.Module, decoder: SiameseDecoder) -> None:
        torch._foreach_copy_(self.copies(), self.online(backbone, decoder))

    @torch.no_grad()
    def update(self, backbone: nn.Module, decoder: SiameseDecoder, momentum: float) -> None:
        """target = momentum * target + (1 - momentum) * online, parameters only (upstream `mm_update`)."""
        ema_update_(self.copies(), self.online(backbone, decoder), momentum)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.embed(x)
        for blk in self.projector:
            x = blk(x)
        return x[:, 1:]


class SiameseIM(Method):
    """`SiameseIM(...)(images1, images2, rel, mask)` -> SiameseIMOutput, as upstream's `forward_sim`.

    The online ViT (no final norm, frozen patch embedding) encodes the visible patches of view 1; the projector
    and predictor (`SiameseDecoder`, BatchNorm blocks) predict, for every patch of view 2, the momentum target's
    projected features of the full view 2; the UniGrad loss (fp32) compares them. The momentum rises from
    `base_momentum` to 1 on a per-step cosine and is applied before the target pass of each optimizer step.
    Defaults are the released ViT-B 1600-epoch recipe (recipes/siameseim/).

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16.
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: start from a checkpoint: its encoder and, when it holds them, SiameseIM's projector / predictor
            and momentum target (without one, the target starts as a copy of the online weights).
        num_masked: patches removed from view 1 by the BEiT block mask, exactly this many per sample.
        decoder_embed_dim, projector_depth, predictor_depth, decoder_num_heads: the projector / predictor; None =
            the file's, else 768, 2, 4, 16.
        neg_weight: weight of UniGrad's push term.
        base_momentum: the momentum at step 0 (cosine to 1.0 at the last step).
        image_size: the views' size; crop_scale: RandomResizedCrop's area range (release 0.08).
        optim: optimisation (release: blr 6.25e-5, AdamW(0.9, 0.95), wd 0.05, 40 warmup epochs).
        compile: `torch.compile` the forward pass (True), or each transformer block ("regional": about half
            the compile time, `Method.compiled`).
        picture_every_n_epochs: the view-geometry picture every n validation epochs.
    """

    name = "siameseim"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        num_masked: int = 118,
        decoder_embed_dim: int | None = None,
        projector_depth: int | None = None,
        predictor_depth: int | None = None,
        decoder_num_heads: int | None = None,
        neg_weight: float = 0.02,
        base_momentum: float = 0.995,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        optim: Optimization = Optimization(blr=6.25e-5, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40),
        compile: bool | Literal["regional"] = False,
        picture_every_n_epochs: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        # upstream's encoder has no final norm; the downstream ViT pools the patches through a fresh fc_norm
        vit = self.init_backbone(backbone, backbone_kwargs, weights, hints={"decoder_num_heads": decoder_num_heads},
                                 defaults={"final_norm": False, "global_pool": "avg", "fc_norm": True},
                                 freeze_patch_embed=True)
        if self.weights_file is None:  # SiameseIM's fixed table is row-first (MAE's halves swapped)
            vit.pos_embed.data.copy_(sincos_2d(vit.embed_dim, vit.grid_size, vit.num_prefix_tokens, rows_first=True))
        vit.fc_norm.requires_grad_(False)  # not part of pretraining: it stays the identity LayerNorm
        self.init_optim(optim)
        dec = self.file_part("decoder", "siameseim", embed_dim=(decoder_embed_dim, 768),
                             projector_depth=(projector_depth, 2), predictor_depth=(predictor_depth, 4),
                             num_heads=(decoder_num_heads, 16), mlp_ratio=(None, 4.0))
        self.decoder = SiameseDecoder(vit.embed_dim, vit.grid_size, **dec)
        self.momentum = MomentumTarget(vit, self.decoder)
        self.views = TwoCropViews(size=image_size, scale=tuple(crop_scale), mean=vit.data_config["mean"],
                                  std=vit.data_config["std"])
        self._step = self.compiled(self._forward, compile)
        self._momentum_step = -1  # the optimizer step whose momentum update was applied
        self.load_file_parts(derived={"momentum": lambda: self.momentum.copy_from(self.backbone, self.decoder)})

    def forward(self, images1: torch.Tensor, images2: torch.Tensor, rel: RelativeBoxes,
                mask: torch.Tensor | None = None) -> SiameseIMOutput:
        if mask is None:
            mask = masking.block_mask(images1.shape[0], self.backbone.grid_size, self.hparams.num_masked)
            mask = mask.to(images1.device)
        return self._step(images1, images2, RelativeBoxes(*rel), mask.flatten(1).bool())

    def _forward(self, images1, images2, rel: RelativeBoxes, mask: torch.Tensor) -> SiameseIMOutput:
        ids_keep = masking.visible_ids(mask, mask.shape[1] - self.hparams.num_masked)
        latent = self.backbone.forward_features(images1, ids_keep)
        pred = self.decoder(latent, ids_keep, rel)
        target = self.momentum(images2, self.backbone.pos_embed)
        return SiameseIMOutput(unigrad_loss(pred, target, self.hparams.neg_weight), pred, target, mask, latent)

    def momentum_at(self, step: int) -> float:
        """Upstream's per-iteration cosine from base_momentum (step 0) to 1.0 (the last step); base_momentum
        outside a Trainer, where there is no schedule."""
        if self._trainer is None:
            return self.hparams.base_momentum
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return 1 - 0.5 * (1 + math.cos(math.pi * min(step, total) / total)) * (1 - self.hparams.base_momentum)

    def make_views(self, batch: dict) -> dict:
        images = batch["image"]
        if self.training:
            views, g = self.views(images, sizes=batch.get("image_size")), None
        else:  # validation: training views and masks from a fixed seed, comparable across epochs, and a picture
            g = torch.Generator().manual_seed(0)  # of real geometry (upstream has no validation)
            self.views.train()
            try:
                views = self.views(images, seed=0, sizes=batch.get("image_size"))
            finally:
                self.views.eval()
        mask = masking.block_mask(images.shape[0], self.backbone.grid_size, self.hparams.num_masked, generator=g)
        return {"image": views.images1, "image2": views.images2, "rel": views.relative_boxes(),
                "mask": mask.to(views.images1.device, non_blocking=True)}

    def training_loss(self, batch: dict) -> SiameseIMOutput:
        if self._momentum_step != self.global_step:  # once per optimizer step, before the target pass
            self.momentum.update(self.backbone, self.decoder, self.momentum_at(self.global_step))
            self._momentum_step = self.global_step
        return self(batch["image"], batch["image2"], batch["rel"], batch["mask"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self(batch["image"], batch["image2"], batch["rel"], batch["mask"])
        self.log("val/loss", out.loss, prog_bar=True, batch_size=batch["image"].shape[0], sync_dist=True)
        if batch_idx == 0:
            self.save_geometry(batch)

    def save_geometry(self, batch: dict):
        from .pictures import geometry_picture, save_epoch_picture

        grid = geometry_picture(batch["image"], batch["image2"], batch["rel"], self.views.mean, self.views.std,
                                self.backbone.patch_embed.patch_size[0])
        return save_epoch_picture(self, grid, "geometry")
