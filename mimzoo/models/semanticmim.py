"""SemanticMIM's two streams (Yuan et al., 2024): P proxy tokens and the visible patches go through the encoder
blocks; the mask tokens (position only) go through a second stack of blocks with their own weights, attending to
the proxies of the same depth and to each other, never to image tokens. Two streams, not one sequence with an
attention mask: the stacks do not share weights.

Key names follow upstream's layers after `mimzoo.convert.semanticmim` (q and kv projections kept apart, so files
convert by renaming only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, Mlp
from torch import nn


class CrossAttention(nn.Module):
    """Queries from one token group, keys and values from another. BEiT-style (`kv_bias=False, v_bias=True`):
    no k bias."""

    def __init__(self, dim: int, num_heads: int, kv_bias: bool = True, v_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim, bias=kv_bias)
        self.v_bias = nn.Parameter(torch.zeros(dim)) if v_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, Nq, D = q.shape
        bias = self.kv.bias
        if self.v_bias is not None:
            bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        k, v = F.linear(kv, self.kv.weight, bias).reshape(B, -1, 2, self.num_heads, D // self.num_heads).unbind(2)
        q = self.q(q).reshape(B, Nq, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(B, Nq, D))


class CrossBlock(nn.Module):
    """A pre-norm transformer block whose attention reads another group: the key/value tokens go through the
    same `norm1` as the queries (upstream normalises the proxies with the mask stream's own norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float | None = None,
                 beit: bool = False, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, num_heads, kv_bias=not beit, v_bias=beit)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        q = q + self.ls1(self.attn(self.norm1(q), self.norm1(kv)))
        return q + self.ls2(self.mlp(self.norm2(q)))


class MaskStream(nn.Module):
    """The mask tokens' side: a mask token, one `CrossBlock` per encoder block, and the final norm that upstream
    applies to all three token groups."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 init_values: float | None = None, beit: bool = False, eps: float = 1e-6):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(CrossBlock(dim, num_heads, mlp_ratio, init_values, beit, eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)


@dataclass
class Streams:
    proxies: torch.Tensor  # (B, P, D) after the last depth, before the final norm
    image: torch.Tensor  # (B, N_visible, D)
    masked: torch.Tensor  # (B, N_masked, D)
    normed: torch.Tensor  # (B, P + N_visible + N_masked, D): the final norm on all three groups
    per_depth: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (proxies, image, masked) after each depth


def masked_last(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) patch indices with the visible patches first and the masked ones last, each group in raster order
    (a stable sort: no host sync, a fixed shape)."""
    return torch.sort(mask.to(torch.int8), dim=1, stable=True).indices


def split_rows(x: torch.Tensor, mask: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible rows, masked rows) of x (B, N, ...) in raster order."""
    order = masked_last(mask)
    order = order.reshape(*order.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    n = x.shape[1] - num_masked
    return torch.gather(x, 1, order[:, :n]), torch.gather(x, 1, order[:, n:])


def embed_groups(vit, stream: MaskStream, images: torch.Tensor, mask: torch.Tensor, num_masked: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(proxies, visible patches, mask tokens) with their positions; the mask tokens carry position only."""
    P = vit.num_prefix_tokens
    x, _ = vit._patch_tokens(images)
    pos = vit.pos_embed
    proxies = torch.cat([t for t in (vit.cls_token, vit.reg_token) if t is not None], dim=1) + pos[:, :P]
    image, _ = split_rows(x + pos[:, P:], mask, num_masked)
    _, masked = split_rows((stream.mask_token + pos[:, P:]).expand(x.shape[0], -1, -1), mask, num_masked)
    return proxies.expand(x.shape[0], -1, -1), image, masked


def two_streams(vit, stream: MaskStream, images: torch.Tensor, mask: torch.Tensor,
                num_masked: int | None = None) -> Streams:
    """Run both streams. mask (B, N) bool, True = masked, the same count in every row (`num_masked`; read from
    the mask, a host sync, when None); patches of both streams in raster order."""
    P = vit.num_prefix_tokens
    n_masked = int(mask[0].sum()) if num_masked is None else num_masked
    proxies, image, masked = embed_groups(vit, stream, images, mask, n_masked)
    per_depth = []
    for blk, cross in zip(vit.blocks, stream.blocks):
        y = blk(torch.cat([proxies, image], dim=1))
        proxies, image = y[:, :P], y[:, P:]
        masked = cross(masked, torch.cat([proxies, masked], dim=1))
        per_depth.append((proxies, image, masked))
    normed = stream.norm(torch.cat([proxies, image, masked], dim=1))
    return Streams(proxies, image, masked, normed, per_depth)


def proxy_attention(vit, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, P, h, w): how each proxy token attends over the patches at encoder block `layer` on the unmasked images,
    softmax weights averaged over the heads (upstream's `attn_vis.py --get_cls_attn`: the paper's qualitative
    claim is that these maps follow objects). Computed from the block's own qkv projection, since SDPA does not
    return its weights."""
    P = vit.num_prefix_tokens
    x, rope = vit.embed(images)
    if rope is not None:
        raise ValueError("proxy_attention needs absolute positions (no RoPE)")
    depth = len(vit.blocks)
    layer = layer % depth
    for blk in vit.blocks[:layer]:
        x = blk(x)
    attn = vit.blocks[layer].attn
    B, N, _ = x.shape
    qkv = attn.qkv(vit.blocks[layer].norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0][:, :, :P]), attn.k_norm(qkv[1])
    weights = (q * attn.scale @ k.transpose(-2, -1)).softmax(-1).mean(1)  # (B, P, P + N_patches)
    h, w = vit.patch_embed.dynamic_feat_size(images.shape[-2:])
    return weights[:, :, P:].reshape(B, P, h, w)
