"""The one ViT backbone every method and every upstream checkpoint maps onto.

A timm `VisionTransformer` with the options the MIM families need (fixed sin-cos / learned / RoPE / no position
embedding, cls token on or off, pre- or post-norm blocks, final norm on or off) and explicit masking: the caller
passes `ids_keep`, the indices of the patches to encode, in the order the upstream code keeps them.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import PyTorchModelHubMixin
from timm.layers import resample_abs_pos_embed
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_strict, part, read_folder, write_folder
from ..errors import ConfigError
from .blocks import BLOCKS, RopeAttention
from .pos_embed import rope_2d, sincos_2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x[b, ids[b]] for (B, N, ...) tokens and (B, K) indices."""
    index = ids.reshape(*ids.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def mae_init_(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears (and the patch projection as a linear), zero biases,
    identity LayerNorms, N(0, 0.02) tokens."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters(recurse=False):
        if name.endswith("token"):
            nn.init.normal_(p, std=0.02)



def check_divisible(img_size, patch_size) -> None:
    """The patch grid must tile the image: timm would floor the grid and silently ignore the remainder."""
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    patches = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if any(s % p for s, p in zip(sizes, patches)):
        fit = "x".join(str(s // p * p) for s, p in zip(sizes, patches))
        raise ConfigError(f"img_size {'x'.join(map(str, sizes))} is not a multiple of the patch size "
                          f"{'x'.join(map(str, patches))}; use e.g. {fit}")

class ViT(VisionTransformer, PyTorchModelHubMixin, library_name="mimzoo", tags=["mimzoo", "vision-transformer"]):
    """timm ViT with MIM options. Every constructor argument is plain data, so the config round-trips via
    `config.json` (`save_pretrained` / `from_pretrained`).

    pos_embed: "sincos" (MAE's fixed table, a frozen parameter that is loaded, never regenerated), "learn",
        "rope" (2-D rotary in every attention, CroCo v2) or "none".
    pos_embed_prefix: the absolute table has a row per prefix (cls) token (MAE, timm default) or covers the patches
        only and leaves the cls token without position (MIM-Refiner, timm's `no_embed_class`).
    block: "prenorm" (timm) or "postnorm" (data2vec 2.0); embed_norm: LayerNorm right after the cls token joins.
    reg_tokens: extra prefix tokens after the cls token (SemanticMIM's proxies beyond the first, with position rows
        of their own when pos_embed_prefix); init_values: layer scale (BEiT-style blocks), None = none.

    mean, std, crop_pct, interpolation: the preprocessing the weights expect (`data_config`, timm's
        `pretrained_cfg` fields).

    Inputs of another size than `img_size` (with `dynamic_img_size`) get the absolute table resampled bicubically,
    antialiased when shrinking as timm does; a method that must match upstream's plain `F.interpolate` (MIM-Refiner's
    local views) sets `pos_resample_antialias = False` on its instance.
    """

    pos_resample_antialias: bool = True
    provenance: dict | None = None  # where the weights came from (`mimzoo.cards`), set by mimzoo.load

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        reg_tokens: int = 0,
        pos_embed: Literal["sincos", "learn", "rope", "none"] = "sincos",
        pos_embed_prefix: bool = True,
        rope_base: float = 100.0,
        block: Literal["prenorm", "postnorm"] = "prenorm",
        embed_norm: bool = False,
        final_norm: bool = True,
        global_pool: Literal["token", "avg", ""] = "token",
        fc_norm: bool = False,
        num_classes: int = 0,
        norm_eps: float = 1e-6,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        freeze_patch_embed: bool = False,
        dynamic_img_size: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
    ):
        if pos_embed not in ("sincos", "learn", "rope", "none"):
            raise ConfigError(f"pos_embed must be one of sincos, learn, rope, none; got {pos_embed!r}")
        if block not in BLOCKS:
            raise ConfigError(f"block must be one of {sorted(BLOCKS)}; got {block!r}")
        if global_pool == "token" and not class_token:
            global_pool = "avg"
        check_divisible(img_size, patch_size)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias, class_token=class_token, reg_tokens=reg_tokens, init_values=init_values,
            pos_embed="learn" if pos_embed in ("sincos", "learn") else "none",
            no_embed_class=not pos_embed_prefix,
            # timm builds fc_norm only with final_norm on, and then turns its final norm off
            final_norm=final_norm or fc_norm, fc_norm=fc_norm,
            drop_path_rate=drop_path_rate, dynamic_img_size=dynamic_img_size,
            norm_layer=lambda d, **kw: nn.LayerNorm(d, eps=norm_eps, **kw),
            block_fn=BLOCKS[block], attn_layer=RopeAttention if pos_embed == "rope" else Attention,
        )
        self.pos_embed_kind = pos_embed
        self.rope_base = rope_base
        self.data_config = {
            "input_size": (in_chans, img_size, img_size), "mean": tuple(mean), "std": tuple(std),
            "interpolation": interpolation, "crop_pct": crop_pct, "crop_mode": "center",
        }
        if embed_norm:  # set here: timm's pre_norm would also drop the patch-embed bias, which data2vec 2.0 has
            self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps)
        mae_init_(self)
        if pos_embed == "sincos":
            prefix = self.num_prefix_tokens if pos_embed_prefix else 0
            self.pos_embed.data.copy_(sincos_2d(embed_dim, self.patch_embed.grid_size, prefix))
            self.pos_embed.requires_grad_(False)
        if pos_embed == "rope":
            for blk in self.blocks:
                blk.attn.num_prefix_tokens = self.num_prefix_tokens
            self.register_buffer("rope", rope_2d(embed_dim // num_heads, self.patch_embed.grid_size, rope_base),
                                 persistent=False)
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)

    # -- embedding -------------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def _patch_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.patch_embed(x)
        if x.dim() == 4:  # dynamic_img_size keeps the grid
            grid = tuple(x.shape[1:3])
            return x.flatten(1, 2), grid
        return x, self.grid_size

    def _abs_pos(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(patch rows, prefix rows) of the absolute table, resampled when the grid differs."""
        if self.pos_embed is None:
            return None, None
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        table = self.pos_embed
        if grid != self.grid_size:
            table = resample_abs_pos_embed(table, new_size=grid, old_size=self.grid_size, num_prefix_tokens=prefix,
                                           antialias=self.pos_resample_antialias)
        return table[:, prefix:], (table[:, :prefix] if prefix else None)

    def _rope(self, grid: tuple[int, int], ids_keep: torch.Tensor | None) -> torch.Tensor | None:
        if self.pos_embed_kind != "rope":
            return None
        table = self.rope if grid == self.grid_size else rope_2d(
            self.embed_dim // self.blocks[0].attn.num_heads, grid, self.rope_base).to(self.rope)
        if ids_keep is None:
            return table
        return table[ids_keep].unsqueeze(1)  # (B, 1 head, K, 2*head_dim)

    def embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images -> (prefix + kept patch tokens, rope table). Patches get their position before being dropped,
        so kept tokens keep their true position whatever order `ids_keep` puts them in."""
        x, grid = self._patch_tokens(x)
        patch_pos, prefix_pos = self._abs_pos(grid)
        if patch_pos is not None:
            x = x + patch_pos
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        prefix = [t for t in (self.cls_token, self.reg_token) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix = prefix + prefix_pos
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm_pre(self.pos_drop(x)), self._rope(grid, ids_keep)

    def _run_block(self, blk: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return checkpoint(blk, x, rope, use_reentrant=False)
        return blk(x, rope)

    # -- public forward paths --------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None, **unused) -> torch.Tensor:
        """(B, prefix + N, D) tokens after the final norm, patches in patch order; with `ids_keep` (B, K) only
        those patches, in that order."""
        if unused.get("attn_mask") is not None:
            raise ConfigError("mimzoo.models.ViT does not take attn_mask; select tokens with ids_keep instead")
        x, rope = self.embed(x, ids_keep)
        for blk in self.blocks:
            x = self._run_block(blk, x, rope)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        ids_keep: torch.Tensor | None = None,
        **unused,
    ):
        """timm's `forward_intermediates` contract (raw block outputs, optionally normed, NCHW or NLC)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        if output_fmt == "NCHW" and ids_keep is not None:
            raise ConfigError("NCHW intermediates need every patch: use output_fmt='NLC' with ids_keep")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        B, _, height, width = x.shape
        x, rope = self.embed(x, ids_keep)
        outs = []
        for i, blk in enumerate(self.blocks[: max_index + 1] if stop_early else self.blocks):
            x = self._run_block(blk, x, rope)
            if i in take:
                outs.append(self.norm(x) if norm else x)
        prefix = [y[:, : self.num_prefix_tokens] for y in outs]
        outs = [y[:, self.num_prefix_tokens:] for y in outs]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            outs = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in outs]
        if return_prefix_tokens and self.num_prefix_tokens:
            outs = list(zip(outs, prefix))
        if intermediates_only:
            return outs
        return self.norm(x), outs

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size=None) -> None:
        """Change the input resolution: resamples an absolute table (bicubic, as MAE fine-tuning does) or
        rebuilds the RoPE table for the new grid."""
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        if img_size is not None:
            check_divisible(img_size, patch_size or self.patch_embed.patch_size)
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        if self.pos_embed is not None and self.pos_embed_kind == "sincos":
            self.pos_embed.requires_grad_(False)
        if self.pos_embed_kind == "rope":
            self.rope = rope_2d(self.rope.shape[-1] // 2, self.grid_size, self.rope_base).to(self.rope)
        self.data_config["input_size"] = (self.patch_embed.proj.in_channels, *self.patch_embed.img_size)
        if getattr(self, "_hub_mixin_config", None) is not None and img_size is not None:
            # saved configs must rebuild the resized model, not the one it was loaded as
            self._hub_mixin_config["img_size"] = img_size[0] if img_size[0] == img_size[1] else list(img_size)

    # -- the mimzoo folder format (checkpoint.write_folder / read_folder), through huggingface_hub's mixin --------
    def _save_pretrained(self, save_directory) -> None:
        """config.json + model.safetensors in the one mimzoo folder format (`mimzoo.load(dir)` reads it); the
        mixin adds a model card and `push_to_hub`."""
        from .. import cards  # cards reads the zoo, a layer this module otherwise never needs

        config = {"contents": "encoder", "backbone": dict(self._hub_mixin_config),
                  **({"provenance": self.provenance} if self.provenance else {})}
        write_folder(save_directory, config, {f"backbone.{k}": v for k, v in self.state_dict().items()})
        cards.write_folder_card(save_directory, config, what="A mimzoo ViT backbone (`mimzoo.models.ViT`).")

    @classmethod
    def from_pretrained(cls, *args, strict: bool = True, **kwargs):
        """PyTorchModelHubMixin loading (a folder or a Hub repo), strict by default: a missing or extra key is an
        error, not a warning."""
        return super().from_pretrained(*args, strict=strict, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, strict: bool = True, **model_kwargs):
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import hf_hub_download

            files = [hf_hub_download(model_id, name, revision=revision, cache_dir=cache_dir,
                                     force_download=force_download, local_files_only=local_files_only, token=token)
                     for name in (CONFIG_FILE, WEIGHTS_FILE)]
            folder = Path(files[0]).parent
        config, state_dict = read_folder(folder)
        vit = cls(**{**config["backbone"], **model_kwargs})
        weights = part(state_dict, "backbone")
        if strict:
            load_strict(vit, weights, what=str(model_id))
        else:
            vit.load_state_dict(weights, strict=False)
        return vit
