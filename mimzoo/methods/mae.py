"""MAE (He et al., 2021): mask 75% of the patches, encode the rest, reconstruct the removed pixels."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.decoders import MAEDecoder, masked_mse, patchify
from ..models.masking import mae_masking
from ..views import MAEViews
from .base import Method, build_backbone
from .pictures import ReconstructionPictures


@dataclass
class MAEOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, N, p*p*C) for every patch, patch order
    mask: torch.Tensor  # (B, N), 1 = removed
    ids_restore: torch.Tensor
    latent: torch.Tensor  # (B, 1 + K, D) encoder output: cls + kept tokens in ascending-noise order
    decoder_normed: torch.Tensor  # (B, 1 + N, Dd)


class MAE(ReconstructionPictures, Method):
    """`MAE(...)(images, noise)` -> MAEOutput, with MAE's masking rule, decoder, targets and loss.

    Defaults are the paper's ViT-B recipe; `recipes/mae/` has ViT-B/L/H and the tiny quick start.
    """

    def __init__(
        self,
        backbone: str | dict = "vit_base_patch16",
        backbone_kwargs: dict | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        blr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40,
        min_lr: float = 0.0,
        compile: bool = False,
        picture_every_n_epochs: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = vit = build_backbone(backbone, backbone_kwargs)
        p = vit.patch_embed.patch_size[0]
        self.decoder = MAEDecoder(vit.embed_dim, vit.num_patches, vit.grid_size, p * p * 3, decoder_embed_dim,
                                  decoder_depth, decoder_num_heads, num_prefix_tokens=vit.num_prefix_tokens)
        self.views = MAEViews(size=image_size, scale=tuple(crop_scale), mean=vit.data_config["mean"],
                              std=vit.data_config["std"])
        self._step = torch.compile(self._forward) if compile else self._forward

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                mask_ratio: float | None = None) -> MAEOutput:
        return self._step(images, noise, self.hparams.mask_ratio if mask_ratio is None else mask_ratio)

    def _forward(self, images: torch.Tensor, noise: torch.Tensor | None, mask_ratio: float) -> MAEOutput:
        if noise is None:
            noise = torch.rand(images.shape[0], self.backbone.num_patches, device=images.device)
        ids_keep, mask, ids_restore = mae_masking(noise, mask_ratio)
        latent = self.backbone.forward_features(images, ids_keep)
        pred, decoder_normed = self.decoder(latent, ids_restore)
        target = patchify(images, self.backbone.patch_embed.patch_size[0])
        loss = masked_mse(pred.float(), target.float(), mask, self.hparams.norm_pix_loss)
        return MAEOutput(loss, pred, mask, ids_restore, latent, decoder_normed)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "image" in batch and batch["image"].dtype == torch.uint8:
            self.views.train(self.training)
            batch = {**batch, "image": self.views(batch["image"]).images}
        return batch

    def training_loss(self, batch: dict) -> MAEOutput:
        return self(batch["image"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        out = self(images, self.validation_noise(images.shape[0], images.device, batch_idx))
        self.log("val/loss", out.loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        if batch_idx == 0:
            self.save_reconstructions(images, out)
