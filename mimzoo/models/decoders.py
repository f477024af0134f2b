"""Decoders shared by the methods (MAE's, the cross-view one of CroCo / MIMIC, SiameseIM's predictor), and the
patch <-> image helpers."""
from __future__ import annotations

import torch
from timm.layers import apply_rot_embed_cat
from timm.models.vision_transformer import Attention
from torch import nn

from .blocks import Block, RopeAttention
from .pos_embed import relative_sincos, rope_2d, sincos_2d
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


class MAEDecoder(nn.Module):
    """MAE's lightweight decoder: embed the visible tokens, fill the removed positions with a mask token, add the
    fixed sin-cos table, run `depth` blocks, predict p*p*C pixels per patch."""

    def __init__(self, in_dim: int, num_patches: int, grid: tuple[int, int], pred_dim: int, embed_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 1,
                 norm_eps: float = 1e-6):
        super().__init__()
        # what a checkpoint records of this part, so that a method starting from the file rebuilds it
        self.part_config = {"kind": "mae", "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                            "mlp_ratio": mlp_ratio, "norm_eps": norm_eps}
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

    def set_grid(self, grid: tuple[int, int]) -> None:
        """Follow the encoder to another patch grid: the table is fixed (sin-cos), so it is recomputed, not
        resampled."""
        if self.pos_embed is not None:
            table = sincos_2d(self.pos_embed.shape[-1], tuple(grid), self.num_prefix_tokens)
            self.pos_embed = nn.Parameter(table.to(self.pos_embed), requires_grad=False)

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


class CrossAttention(nn.Module):
    """Queries from the view being completed, keys/values from the reference view (CroCo's projq/projk/projv)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: torch.Tensor | None = None,
                rope_y: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        heads = lambda t: t.reshape(B, t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.projq(x)), heads(self.projk(y)), heads(self.projv(y))
        if rope_x is not None:
            q = apply_rot_embed_cat(q, rope_x, half=True).type_as(v)
            k = apply_rot_embed_cat(k, rope_y, half=True).type_as(v)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossBlock(Block):
    """CroCo's decoder block: self-attention, then cross-attention to the (normed) reference tokens, then MLP.
    The reference tokens pass through unchanged; every block has its own `norm_y`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm, rope: bool = False):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                         attn_layer=RopeAttention if rope else Attention)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = norm_layer(dim)
        self.norm_y = norm_layer(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x: torch.Tensor | None = None,
                rope_y: torch.Tensor | None = None) -> torch.Tensor:
        x = x + (self.attn(self.norm1(x), rope=rope_x) if rope_x is not None else self.attn(self.norm1(x)))
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, rope_x, rope_y)
        return x + self.mlp(self.norm3(x))


class CrossDecoder(MAEDecoder):
    """Cross-view completion decoder (CroCo; MIMIC's multi-view MAE): MAE's decoder whose blocks also attend to
    the encoded reference view. Positions: a fixed sin-cos table on both sequences, or RoPE (CroCo v2)."""

    def __init__(self, in_dim: int, num_patches: int, grid: tuple[int, int], pred_dim: int, embed_dim: int = 512,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 0,
                 rope_base: float | None = None, norm_eps: float = 1e-6):
        super().__init__(in_dim, num_patches, grid, pred_dim, embed_dim, 0, num_heads, mlp_ratio, num_prefix_tokens,
                         norm_eps)
        self.part_config.update(kind="cross", depth=depth)
        norm = lambda d, **kw: nn.LayerNorm(d, eps=norm_eps, **kw)  # noqa: E731
        self.blocks = nn.ModuleList(CrossBlock(embed_dim, num_heads, mlp_ratio, norm, rope=rope_base is not None)
                                    for _ in range(depth))
        if rope_base is not None:
            del self.pos_embed
            self.pos_embed = None
            self.register_buffer("rope", rope_2d(embed_dim // num_heads, grid, rope_base), persistent=False)
            for blk in self.blocks:
                blk.attn.num_prefix_tokens = num_prefix_tokens
        self.rope_base, self.head_dim = rope_base, embed_dim // num_heads
        mae_init_(self)

    def set_grid(self, grid: tuple[int, int]) -> None:
        super().set_grid(grid)
        if self.rope_base is not None:
            self.rope = rope_2d(self.head_dim, tuple(grid), self.rope_base).to(self.rope)

    def forward(self, latent: torch.Tensor, reference: torch.Tensor, ids_restore: torch.Tensor | None = None,
                return_all_blocks: bool = False):
        """latent: encoded [prefix, visible] tokens of the view to complete (all patches when ids_restore is None,
        the binocular downstream path); reference: encoded [prefix, all patches] of the other view.
        Returns (pred for every patch, normed decoder tokens) or, with return_all_blocks, the raw output of every
        block with the last one normed (what DPT heads tap)."""
        x = self.embed(latent)
        if ids_restore is not None:
            x = self.restore(x, ids_restore)
        y = self.embed(reference)
        rope = None
        if self.pos_embed is not None:
            x, y = x + self.pos_embed, y + self.pos_embed
        else:
            rope = self.rope
        outs = []
        for blk in self.blocks:
            x = blk(x, y, rope, rope)
            outs.append(x)
        x = self.norm(x)
        if return_all_blocks:
            return outs[:-1] + [x]
        return self.pred(x[:, self.num_prefix_tokens:]), x


class PermuteBN(nn.Module):
    """SiameseIM's token BatchNorm: BatchNorm1d over the channels of (B, L, C) tokens (statistics over all B*L
    tokens, cls included), in fp32 whatever the autocast. Under DDP, `sync_batchnorm` makes them global."""

    def __init__(self, dim: int, **factory):  # timm passes device / dtype
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.bn(x.float().transpose(1, 2)).transpose(1, 2)


def bn_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=PermuteBN) for _ in range(depth))


class SiameseDecoder(nn.Module):
    """SiameseIM's projector and predictor. `project`: the encoder's tokens -> `embed` -> `projector` blocks (the
    part the momentum target copies). `forward`: the projected [cls, visible view-1] tokens, plus one query per
    view-2 patch (`mask_token` + `pos_mlp` of its relative sin-cos position in view 1), with the row-first fixed
    table on the view-1 tokens, through the `predictor` blocks (full self-attention) and `pred`; the
    predictions for every view-2 patch. Both block stacks normalise with `PermuteBN`; no final norm."""

    def __init__(self, in_dim: int, grid: tuple[int, int], embed_dim: int = 768, projector_depth: int = 2,
                 predictor_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        self.part_config = {"kind": "siameseim", "embed_dim": embed_dim, "projector_depth": projector_depth,
                            "predictor_depth": predictor_depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio}
        self.grid = tuple(grid)
        self.embed = nn.Linear(in_dim, embed_dim)
        self.projector = bn_blocks(embed_dim, projector_depth, num_heads, mlp_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.grid, 1, rows_first=True), requires_grad=False)
        self.pos_mlp = nn.Linear(2 * embed_dim, embed_dim)
        self.predictor = bn_blocks(embed_dim, predictor_depth, num_heads, mlp_ratio)
        self.pred = nn.Linear(embed_dim, embed_dim)
        mae_init_(self)

    def set_grid(self, grid: tuple[int, int]) -> None:
        self.grid = tuple(grid)
        table = sincos_2d(self.pos_embed.shape[-1], self.grid, 1, rows_first=True)
        self.pos_embed = nn.Parameter(table.to(self.pos_embed), requires_grad=False)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for blk in self.projector:
            x = blk(x)
        return x

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor, rel) -> torch.Tensor:
        """latent: the encoder's [cls, visible view-1 patches]; ids_keep: (B, K) their patch indices; rel: the
        `RelativeBoxes` of view 2 in view 1. Returns (B, N, embed_dim) predictions for every view-2 patch."""
        x = self.project(latent)
        table = self.pos_embed.to(x.dtype)
        visible = gather_tokens(table[:, 1:].expand(x.shape[0], -1, -1), ids_keep)
        queries = self.pos_mlp(relative_sincos(rel, table.shape[-1], self.grid[0]).to(x.dtype))
        queries = self.mask_token.to(x.dtype) + queries
        x = torch.cat([x[:, :1] + table[:, :1], x[:, 1:] + visible, queries], dim=1)
        for blk in self.predictor:
            x = blk(x)
        return self.pred(x[:, -queries.shape[1]:])
