"""Transformer blocks shared by every backbone and decoder: timm's block, plus RoPE and post-norm variants."""
from __future__ import annotations

import torch
from timm.layers import AttentionRope
from timm.models.vision_transformer import Block as TimmBlock


class Block(TimmBlock):
    """timm's pre-norm block whose attention may take a rotary table (`rope`)."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attn(self.norm1(x), rope=rope) if rope is not None else self.attn(self.norm1(x))
        x = x + self.drop_path1(self.ls1(attn))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class PostNormBlock(Block):
    """data2vec 2.0's post-norm block: `x = norm1(x + attn(x)); x = norm2(x + mlp(x))`.

    Not timm's ResPostBlock, which normalises the branch output instead of the sum.
    """

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attn(x, rope=rope) if rope is not None else self.attn(x)
        x = self.norm1(x + self.drop_path1(self.ls1(attn)))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))


class RopeAttention(AttentionRope):
    """timm's fused-qkv RoPE attention in the 'half' layout; the owner sets `num_prefix_tokens` (left unrotated)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(dim, rotate_half=True, num_prefix_tokens=0, **kwargs)


BLOCKS = {"prenorm": Block, "postnorm": PostNormBlock}
