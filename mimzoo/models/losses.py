"""The losses of the methods, each in one place: MAE's masked pixel MSE and SiameseIM's UniGrad."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


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


def unigrad_loss(pred: torch.Tensor, target: torch.Tensor, neg_weight: float = 0.02) -> torch.Tensor:
    """SiameseIM's dense UniGrad loss, in fp32 whatever the autocast: with p the predictions and t the targets
    after a LayerNorm without affine (eps 1e-5), one row per token,
    `(mean ||p - t||^2 + neg_weight * mean p^T C p) / D` where C = t^T t / M is the targets' correlation matrix,
    averaged over all ranks (upstream all-reduces it), so the push term sees every rank's negatives."""
    with torch.autocast(pred.device.type, enabled=False):
        D = pred.shape[-1]
        p = pred.float().reshape(-1, D)
        with torch.no_grad():
            t = F.layer_norm(target.float(), (D,), eps=1e-5).reshape(-1, D)
            correlation = t.T @ t / t.shape[0]
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(correlation)
                correlation = correlation / dist.get_world_size()
        pull = (p - t).pow(2).sum(-1).mean()
        push = ((p @ correlation) * p).sum(-1).mean()  # the diagonal of p C p^T, without the M x M matrix
        return (pull + neg_weight * push) / D
