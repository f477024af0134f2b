"""Pixel decoders shared by the methods, and the patch <-> image helpers their losses need."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import Block
from .pos_embed import sincos_2d
from .vit import gather_tokens, mae_init_


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), row-major patches, channel-last inside a patch ('nchpwq->nhwpqc')."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    B = patches.shape[0]
    (h, w), p = grid, patch_size
    x = patches.reshape(B, h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, channels, h * p, w * p)


def normalized_pixels(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm_pix target: per-patch mean/std (unbiased variance, + eps inside the root)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error per patch, averaged over the removed patches only (mask 1 = removed)."""
    if norm_pix:
        target = normalized_pixels(target)
    loss = (pred - target).pow(2).mean(dim=-1)
    mask = mask.to(loss.dtype)
    return (loss * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: embed the visible tokens, fill the removed positions with a mask token, add the
    fixed sin-cos table, run `depth` blocks, predict p*p*C pixels per patch."""

    def __init__(self, in_dim: int, num_patches: int, grid: tuple[int, int], pred_dim: int, embed_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 1,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(in_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, grid, num_prefix_tokens), requires_grad=False)
        norm = lambda d, **kw: nn.LayerNorm(d, eps=norm_eps, **kw)  # noqa: E731
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth))
        self.norm = norm(embed_dim)
        self.pred = nn.Linear(embed_dim, pred_dim)
        mae_init_(self)

    def restore(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Embedded [prefix, visible] tokens -> [prefix, all N patches] with mask tokens, back in patch order."""
        P = self.num_prefix_tokens
        B, N = ids_restore.shape
        visible = x[:, P:]
        fill = self.mask_token.expand(B, N - visible.shape[1], -1).to(visible.dtype)
        patches = gather_tokens(torch.cat([visible, fill], dim=1), ids_restore)
        return torch.cat([x[:, :P], patches], dim=1)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred (B, N, pred_dim) for every patch, normed decoder tokens (B, P + N, D) incl. prefix)."""
        x = self.restore(self.embed(latent), ids_restore) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.pred(x[:, self.num_prefix_tokens:]), x
