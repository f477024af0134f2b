"""SemanticMIM (Yuan et al., 2024): P proxy tokens sit between the image and the mask tokens. Per depth the encoder
block updates the proxies and the visible patches; a second block stack updates the mask tokens (position only),
which see the proxies and each other but never an image token. The head predicts MaskFeat's HOG (or BEiT's visual
tokens) of the masked patches from the mask tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.decoders import patchify
from ..models.hog import HOG
from ..models.losses import normalized_pixels
from ..models.semanticmim import MaskStream, embed_groups, proxy_attention, split_rows, two_streams
from ..optim import Optimization
from ..views import MAEViews
from .base import Method
from .pictures import attention_picture, save_epoch_picture


@dataclass
class SemanticMIMOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, N_masked, target_dim): HOG / pixels, or (B, N_masked, vocab) logits
    target: torch.Tensor  # (B, N_masked, target_dim), or (B, N_masked) token ids
    mask: torch.Tensor  # (B, N) bool, True = masked


def random_mask(noise: torch.Tensor, num_masked: int) -> torch.Tensor:
    """(B, N) bool with exactly `num_masked` True per row: the patches of lowest noise (a uniform random subset,
    upstream's `SimMIMMaskGeneratorOurs` at mask patch = model patch)."""
    ids = noise.argsort(dim=1)[:, :num_masked]
    return torch.zeros_like(noise, dtype=torch.bool).scatter(1, ids, True)


class SemanticMIM(Method):
    """`SemanticMIM(...)(images, mask=None)` -> SemanticMIMOutput.

    Defaults are MaskFeat-SemanticMIM ViT-B/16 (recipes/semanticmim/ has it and the BEiT variant).

    Args:
        backbone, backbone_kwargs: the encoder (a mimzoo ViT); None = the file's with `weights`, else
            vit_base_patch16 with `num_proxies` prefix tokens, learned positions, no final norm, mean pooling.
        weights: a SemanticMIM file (upstream mmengine checkpoint or ours): encoder, mask stream and head.
        num_proxies: P proxy tokens (MaskFeat variant 8, BEiT 1); with `weights` it must equal the file's.
        target: "hog" (MaskFeat), "tokens" (BEiT: needs `tokenizer`), "pixels" (normalised pixels, MAE's target:
            ours, not the paper's).
        tokenizer: for target "tokens", a module mapping the views (B, 3, H, W) to token ids (B, N) or logits
            (B, vocab, h, w) (BEiT uses DALL-E's dVAE encoder, which mimzoo does not ship).
        vocab_size: the tokenizer's vocabulary (DALL-E 8192).
        mask_ratio: fraction of the patches masked, the same count in every image (MaskFeat 0.8, BEiT 0.6).
        bottleneck: True = SemanticMIM's two streams; False = the paper's baseline, one stream with full attention
            over proxies, visible patches and mask tokens through the encoder blocks.
        image_size, crop_scale: the training views (RandomResizedCrop + flip).
        optim: optimisation (MaskFeat-SemanticMIM: blr 2e-4, AdamW(0.9, 0.999), wd 0.05; the recipes clip
            gradients at 0.02 through the trainer).
        compile: `torch.compile` the forward pass (True), or each transformer block ("regional": about half
            the compile time, `Method.compiled`).
        picture_every_n_epochs: the proxies' attention maps on the first validation batch (`<run>/attention/`)
            every n validation epochs.
    """

    name = "semanticmim"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        num_proxies: int | None = None,
        target: Literal["hog", "tokens", "pixels"] = "hog",
        tokenizer: nn.Module | None = None,
        vocab_size: int = 8192,
        mask_ratio: float = 0.8,
        bottleneck: bool = True,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        optim: Optimization = Optimization(blr=2e-4, weight_decay=0.05, betas=(0.9, 0.999), warmup_epochs=30),
        compile: bool | Literal["regional"] = False,
        picture_every_n_epochs: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if target not in ("hog", "tokens", "pixels"):
            raise ConfigError(f"target must be 'hog', 'tokens' or 'pixels'; got {target!r}")
        defaults = {"pos_embed": "learn", "final_norm": False, "global_pool": "avg", "fc_norm": True,
                    "reg_tokens": (8 if num_proxies is None else num_proxies) - 1}
        vit = self.init_backbone(backbone, backbone_kwargs, weights, defaults=None if weights else defaults)
        if num_proxies is not None and vit.num_prefix_tokens != num_proxies:
            raise ConfigError(f"num_proxies={num_proxies} but the backbone has {vit.num_prefix_tokens} proxy tokens "
                              f"(cls + register tokens){' in ' + str(weights) if weights else ''}: they must be "
                              f"equal, else the proxies would start at random")
        self._set_hparam("num_proxies", vit.num_prefix_tokens)
        if vit.fc_norm is not None and not isinstance(vit.fc_norm, nn.Identity):
            # the downstream pooling's norm (fresh in every upstream downstream config): pretraining never reads it,
            # and plain DDP refuses parameters that get no gradient, so it stays frozen at its init
            vit.fc_norm.requires_grad_(False)
        self.init_optim(optim)
        p = vit.patch_embed.patch_size[0]
        beit = any(getattr(b, "ls1", None) is not None and not isinstance(b.ls1, nn.Identity) for b in vit.blocks)
        self.mask_stream = MaskStream(vit.embed_dim, len(vit.blocks) if bottleneck else 0,
                                      vit.blocks[0].attn.num_heads, vit.blocks[0].mlp.fc1.out_features / vit.embed_dim,
                                      0.1 if beit else None, beit=beit)
        self.hog = HOG(patch_size=p) if target == "hog" else None
        self.tokenizer = tokenizer
        out = {"hog": 3 * 9 * (p // 8) ** 2, "tokens": vocab_size, "pixels": p * p * 3}[target]
        self.head = nn.Linear(vit.embed_dim, out)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.num_masked = round(vit.num_patches * mask_ratio)
        self.views = MAEViews(size=image_size, scale=tuple(crop_scale), mean=vit.data_config["mean"],
                              std=vit.data_config["std"])
        self._step = self.compiled(self._forward, compile)
        self.load_file_parts()

    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        """An upstream file's variant: its target, vocabulary and the mask ratio its configs use."""
        kwargs = {**super().converted_kwargs(config), "target": config.get("target", "hog")}
        if kwargs["target"] == "tokens":
            kwargs.update(vocab_size=config.get("vocab_size") or 8192, mask_ratio=0.6)
        return kwargs

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> SemanticMIMOutput:
        """images (B, 3, H, W) normalised views; mask (B, N) or (B, h, w), 1 = masked, `num_masked` per image
        (drawn uniformly when None)."""
        if mask is None:
            noise = torch.rand(images.shape[0], self.backbone.num_patches, device=images.device)
            mask = random_mask(noise, self.num_masked)
        return self._step(images, mask.flatten(1).bool())

    def _forward(self, images: torch.Tensor, mask: torch.Tensor) -> SemanticMIMOutput:
        n = self.num_masked
        if self.hparams.bottleneck:
            tokens = two_streams(self.backbone, self.mask_stream, images, mask, num_masked=n).normed[:, -n:]
        else:
            tokens = self.single_stream(images, mask)
        pred = self.head(tokens)
        target = self.targets(images, mask)
        if self.hparams.target == "tokens":
            loss = F.cross_entropy(pred.flatten(0, 1).float(), target.flatten())
        else:
            loss = F.mse_loss(pred.float(), target)
        return SemanticMIMOutput(loss, pred, target, mask)

    def single_stream(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The baseline: proxies, visible patches and mask tokens in one sequence through the encoder blocks."""
        y = torch.cat(embed_groups(self.backbone, self.mask_stream, images, mask, self.num_masked), dim=1)
        for blk in self.backbone.blocks:
            y = blk(y)
        return self.mask_stream.norm(y)[:, -self.num_masked:]

    def unmasked_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D): the pretraining encoder over [proxies, all patches] with its final norm (upstream
        `backbone(x, None, None)`, the features of its VOC linear segmentation); `mimzoo.load(file,
        pretraining_norm=True)` gives the same as a backbone."""
        return self.mask_stream.norm(self.backbone.forward_features(images))

    def proxy_attention(self, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """(B, P, h, w): each proxy's attention over the patches at block `layer` (heads averaged)."""
        return proxy_attention(self.backbone, images, layer)

    @torch.no_grad()
    def targets(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked patches' targets in raster order: HOG (fp32), normalised pixels, or token ids."""
        kind = self.hparams.target
        if kind == "hog":
            full = self.hog(images)
        elif kind == "pixels":
            full = normalized_pixels(patchify(images.float(), self.backbone.patch_embed.patch_size[0]))
        else:
            if self.tokenizer is None:  # checked here, not at construction: a recipe prints and builds without one
                raise ConfigError("target 'tokens' (BEiT-SemanticMIM) needs a tokenizer: pass tokenizer=<a module "
                                  "mapping images to token ids>, e.g. DALL-E's dVAE encoder; mimzoo ships none")
            out = self.tokenizer(images)
            full = (out.argmax(1) if out.dim() == 4 else out).flatten(1).long()
        return split_rows(full, mask, self.num_masked)[1]

    # -- training ---------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> SemanticMIMOutput:
        return self(batch["image"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        noise = self.validation_noise(images.shape[0], images.device, batch_idx)
        out = self(images, random_mask(noise, self.num_masked))
        self.log("val/loss", out.loss, prog_bar=True, batch_size=images.shape[0], sync_dist=True)
        if batch_idx == 0 and not self.trainer.sanity_checking:
            grid = attention_picture(images, self.proxy_attention(images), self.views.mean, self.views.std)
            save_epoch_picture(self, grid, "attention")
