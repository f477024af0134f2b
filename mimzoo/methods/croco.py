"""Cross-view completion: CroCo v1/v2 (Weinzaepfel et al. 2022, 2023) and MIMIC's multi-view MAE (Marathe et al.
2023). Mask most of view 1, encode what is left and all of view 2 with the same encoder, and reconstruct view 1's
removed pixels with a decoder that also attends to view 2."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError
from ..models.decoders import CrossDecoder, patchify
from ..models.losses import masked_mse
from ..models.masking import croco_mask, mae_masking
from ..optim import Optimization
from ..views import CroCoPairViews, PairViews
from .base import Method
from .pictures import ReconstructionPictures


@dataclass
class CroCoOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, N, p*p*3) for every patch of view 1, patch order
    mask: torch.Tensor  # (B, N) float, 1 = removed
    feat1: torch.Tensor  # encoder output on view 1's visible patches (after the prefix)
    feat2: torch.Tensor  # encoder output on all of view 2
    decoder_normed: torch.Tensor  # (B, prefix + N, Dd)


def masking(noise: torch.Tensor, ratio: float, rule: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids_keep, mask, ids_restore) under CroCo's rule (visible in patch order, int(ratio N) masked) or MAE's
    (visible in ascending-noise order, int(N (1 - ratio)) kept) which MIMIC uses."""
    if rule == "mae":
        return mae_masking(noise, ratio)
    mask = croco_mask(noise, ratio)
    num_visible = mask.shape[1] - int(ratio * mask.shape[1])
    # visible first in patch order, then the masked ones: the order the decoder's restore undoes
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return ids_shuffle[:, :num_visible], mask.float(), torch.argsort(ids_shuffle, dim=1)


class CroCo(ReconstructionPictures, Method):
    """`CroCo(...)(img1, img2, noise=None)` -> CroCoOutput. v1 = `backbone_kwargs={"pos_embed": "sincos"}`,
    v2 = `{"pos_embed": "rope"}` (RoPE base 100, in the encoder and in every decoder attention).

    Defaults: CroCo's ViT-B/16 (no cls token) with the 512 x 8 decoder, mask 0.9 with CroCo's rounding,
    normalised-pixel loss, AdamW(0.9, 0.95) wd 0.05, blr 1.5e-4, 40 warmup epochs, and `optim.cosine_epochs` for
    CroCo's habit of stopping (max_epochs) before the end of its cosine; pair views as CroCo trains
    (independent crops and colour jitter) or MIMIC's (`views="mimic"`: the stored views, randomly swapped).

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_base_patch16
            with `encoder_defaults` (CroCo: no cls token, RoPE, mean pooling).
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: start from a checkpoint: its encoder and, when it has a cross-view decoder, its decoder.
        mask_ratio: fraction of view 1's patches removed.
        masking_rule: "croco" (int(ratio N) masked, visible in patch order) or "mae" (MIMIC's: int(N (1 - ratio))
            kept, in ascending-noise order).
        norm_pix_loss: per-patch normalised pixel targets; None = what `weights` was trained with, else True.
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder; None = the file's, else 512, 8, 16.
        image_size: the views' size.
        views: "croco" (independent crops + colour jitter) or "mimic" (the stored views, randomly swapped).
        optim: optimisation (CroCo: blr 1.5e-4, AdamW(0.9, 0.95), wd 0.05, 40 warmup epochs).
        picture_every_n_epochs: reconstruction pictures every n validation epochs.
    """

    name = "croco"
    # the encoder CroCo trains when `backbone` leaves it open
    encoder_defaults: ClassVar[dict] = {"class_token": False, "pos_embed": "rope", "global_pool": "avg"}

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        mask_ratio: float = 0.9,
        masking_rule: Literal["croco", "mae"] = "croco",
        norm_pix_loss: bool | None = None,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        image_size: int = 224,
        views: Literal["croco", "mimic"] = "croco",
        optim: Optimization = Optimization(blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40),
        picture_every_n_epochs: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        vit = self.init_backbone(backbone, backbone_kwargs, weights,
                                 defaults=None if isinstance(backbone, dict) else self.encoder_defaults,
                                 hints={"decoder_num_heads": decoder_num_heads})
        self.init_optim(optim)
        dec = self.file_part("decoder", "cross", embed_dim=(decoder_embed_dim, 512), depth=(decoder_depth, 8),
                             num_heads=(decoder_num_heads, 16), mlp_ratio=(None, 4.0))
        self.norm_pix_loss = self.file_fact("norm_pix_loss", norm_pix_loss, True)
        p = vit.patch_embed.patch_size[0]
        self.decoder = CrossDecoder(vit.embed_dim, vit.num_patches, vit.grid_size, p * p * 3, dec["embed_dim"],
                                    dec["depth"], dec["num_heads"], dec["mlp_ratio"],
                                    num_prefix_tokens=vit.num_prefix_tokens,
                                    rope_base=vit.rope_base if vit.pos_embed_kind == "rope" else None)
        mean, std = vit.data_config["mean"], vit.data_config["std"]
        self.views = (CroCoPairViews(size=image_size, mean=mean, std=std) if views == "croco"
                      else PairViews(size=image_size, mean=mean, std=std))
        self.load_file_parts()

    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        if not config.get("decoder"):
            raise ConfigError("this checkpoint holds the encoder only: load it with model='backbone', or start "
                              "training from it with CroCo(weights=...)")
        return {**super().converted_kwargs(config), "mask_ratio": config.get("mask_ratio", 0.9)}

    def forward(self, img1: torch.Tensor, img2: torch.Tensor, noise: torch.Tensor | None = None,
                mask_ratio: float | None = None) -> CroCoOutput:
        hp = self.hparams
        if noise is None:
            noise = torch.rand(img1.shape[0], self.backbone.num_patches, device=img1.device)
        ratio = hp.mask_ratio if mask_ratio is None else mask_ratio
        ids_keep, mask, ids_restore = masking(noise, ratio, hp.masking_rule)
        feat1 = self.backbone.forward_features(img1, ids_keep)
        feat2 = self.backbone.forward_features(img2)
        pred, decoder_normed = self.decoder(feat1, feat2, ids_restore)
        target = patchify(img1, self.backbone.patch_embed.patch_size[0])
        loss = masked_mse(pred.float(), target.float(), mask, self.norm_pix_loss)
        return CroCoOutput(loss, pred, mask, feat1, feat2, decoder_normed)

    def make_views(self, batch: dict) -> dict:
        v = self.views(batch["image"], batch["image2"])
        return {"image": v.images1, "image2": v.images2}

    def training_loss(self, batch: dict) -> CroCoOutput:
        return self(batch["image"], batch["image2"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        img1, img2 = batch["image"], batch["image2"]
        out = self(img1, img2, self.validation_noise(img1.shape[0], img1.device, batch_idx))
        self.log("val/loss", out.loss, prog_bar=True, batch_size=img1.shape[0], sync_dist=True)
        if batch_idx == 0:
            self.save_reconstructions(img1, out, reference=img2)

    def dense_features(self, img1: torch.Tensor, img2: torch.Tensor | None = None,
                       hooks: list[int] | None = None) -> list[torch.Tensor]:
        """The token maps CroCo's DPT head taps, as (B, N, C) patch tokens (prefix dropped).

        Monocular (img2 None): encoder blocks [d/4-1, d/2-1, 3d/4-1, d-1] (the last one normed). Binocular: the
        list [encoder blocks..., decoder blocks...] of the unmasked pair (view 1 decoded against view 2), default
        hooks `enc+dec-1 - i*step`, step = {8: 3, 12: 4, 24: 8}[decoder depth], as `PixelwiseTaskWithDPT`.
        """
        vit, P = self.backbone, self.backbone.num_prefix_tokens
        depth = len(vit.blocks)
        enc = vit.forward_intermediates(img1, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True)
        enc = [torch.cat([p, t], 1) if P else t for t, p in (o if isinstance(o, tuple) else (o, None) for o in enc)]
        enc[-1] = vit.norm(enc[-1])
        if img2 is None:
            hooks = hooks or [depth // 4 * i - 1 for i in (1, 2, 3, 4)]
            return [enc[i][:, P:] for i in hooks]
        dec = self.decoder(enc[-1], vit.forward_features(img2), return_all_blocks=True)
        every = enc + dec
        step = {8: 3, 12: 4, 24: 8}.get(len(self.decoder.blocks), max(1, len(self.decoder.blocks) // 3))
        hooks = hooks or [len(every) - 1 - i * step for i in (3, 2, 1, 0)]
        return [every[i][:, P:] for i in hooks]


class MIMIC(CroCo):
    """MIMIC's multi-view MAE (the model behind the released MIMIC-3M checkpoint): CroCo with MIMIC's defaults.
    MAE's encoder (cls token, fixed sin-cos table) + CroCo's cross-attention decoder, MAE's masking rule (at 0.9 it
    keeps int(196 * 0.1) = 19 patches where CroCo keeps 20), MIMIC's loader (the stored 224 x 224 views, randomly
    swapped, nothing else). Recipe: batch 4096, blr 1.5e-4, 200 epochs, 20 warmup, mask 0.9, norm-pix.
    Same arguments as CroCo."""

    name = "mimic"
    encoder_defaults: ClassVar[dict] = {"class_token": True, "pos_embed": "sincos", "global_pool": "token"}

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        mask_ratio: float = 0.9,
        masking_rule: Literal["croco", "mae"] = "mae",
        norm_pix_loss: bool | None = None,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        image_size: int = 224,
        views: Literal["croco", "mimic"] = "mimic",
        optim: Optimization = Optimization(blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=20),
        picture_every_n_epochs: int = 1,
    ):
        super().__init__(backbone=backbone, backbone_kwargs=backbone_kwargs, weights=weights, mask_ratio=mask_ratio,
                         masking_rule=masking_rule, norm_pix_loss=norm_pix_loss, decoder_embed_dim=decoder_embed_dim,
                         decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads, image_size=image_size,
                         views=views, optim=optim, picture_every_n_epochs=picture_every_n_epochs)
