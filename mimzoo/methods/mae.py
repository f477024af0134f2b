"""MAE (He et al., 2021): mask 75% of the patches, encode the rest, reconstruct the removed pixels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError
from ..models.decoders import MAEDecoder, patchify
from ..models.losses import masked_mse
from ..models.masking import mae_masking
from ..optim import Optimization
from ..views import MAEViews
from .base import Method
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

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16.
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: start from a checkpoint (zoo name, path in any supported format, `hf-hub:`): its encoder and, when
            it has an MAE decoder, its decoder (continued pretraining).
        mask_ratio: fraction of the patches removed.
        norm_pix_loss: per-patch normalised pixel targets; None = what `weights` was trained with (the file's
            args, else the zoo's `targets`), else True.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder; None = the file's decoder, else 512, 8, 16.
        image_size: the training views' size.
        crop_scale: RandomResizedCrop's area range.
        optim: optimisation (MAE: blr 1.5e-4, AdamW(0.9, 0.95), wd 0.05, 40 warmup epochs).
        compile: `torch.compile` the forward pass (True), or each transformer block ("regional": about half
            the compile time, `Method.compiled`).
        picture_every_n_epochs: reconstruction pictures every n validation epochs.
    """

    name = "mae"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool | None = None,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        optim: Optimization = Optimization(blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40),
        compile: bool | Literal["regional"] = False,
        picture_every_n_epochs: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        vit = self.init_backbone(backbone, backbone_kwargs, weights, hints={"decoder_num_heads": decoder_num_heads})
        self.init_optim(optim)
        dec = self.file_part("decoder", "mae", embed_dim=(decoder_embed_dim, 512), depth=(decoder_depth, 8),
                             num_heads=(decoder_num_heads, 16), mlp_ratio=(None, 4.0), norm_eps=(None, 1e-6))
        self.norm_pix_loss = self.file_fact("norm_pix_loss", norm_pix_loss, True)
        p = vit.patch_embed.patch_size[0]
        self.decoder = MAEDecoder(vit.embed_dim, vit.num_patches, vit.grid_size, p * p * 3, dec["embed_dim"],
                                  dec["depth"], dec["num_heads"], dec["mlp_ratio"],
                                  num_prefix_tokens=vit.num_prefix_tokens, norm_eps=dec["norm_eps"])
        self.views = MAEViews(size=image_size, scale=tuple(crop_scale), mean=vit.data_config["mean"],
                              std=vit.data_config["std"])
        self._step = self.compiled(self._forward, compile)
        self.load_file_parts()

    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        if not config.get("decoder"):
            raise ConfigError("this MAE checkpoint holds the encoder only (the released mae_pretrain_vit_* files): "
                              "load it with model='backbone', start training from it with MAE(weights=...), or use "
                              "the *_full / *_visualize zoo entries for the decoder")
        ratio = config.get("mask_ratio")  # a transformers config records the ratio it was trained with
        return {**super().converted_kwargs(config), **({"mask_ratio": ratio} if ratio is not None else {})}

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
        loss = masked_mse(pred.float(), target.float(), mask, self.norm_pix_loss)
        return MAEOutput(loss, pred, mask, ids_restore, latent, decoder_normed)

    def training_loss(self, batch: dict) -> MAEOutput:
        return self(batch["image"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        out = self(images, self.validation_noise(images.shape[0], images.device, batch_idx))
        self.log("val/loss", out.loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        if batch_idx == 0:
            self.save_reconstructions(images, out)
