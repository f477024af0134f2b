"""Optimisation shared by every method: the argument group (`Optimization`), MAE's weight-decay and layer-decay
parameter groups, the per-step warmup + cosine schedule, and MAE's LARS (for linear probing)."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
from timm.optim import Lars
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class Optimization:
    """The optimisation hyper-parameters of a method, one group in every recipe (`optim:`). Each method's default
    is its paper's recipe; a recipe sets only the fields it changes.

    Args:
        blr: base learning rate: lr = blr x effective batch / 256 (effective batch = per-device batch x devices x
            nodes x gradient accumulation), MAE's rule. Ignored when `lr` is set.
        lr: absolute learning rate (overrides `blr`).
        weight_decay: decoupled weight decay of the matrices (never of biases, norms and 1-D tensors).
        betas: AdamW's betas.
        warmup_epochs: linear warmup from 0, per optimizer step, over this many epochs.
        min_lr: the cosine ends at this absolute lr.
        cosine_epochs: the cosine's horizon in epochs when it differs from `trainer.max_epochs` (CroCo trains 400
            epochs of an 800-epoch cosine); None = max_epochs.
        layer_decay: layer-wise lr decay (BEiT/MAE fine-tuning): block i gets decay^(depth + 1 - layer); None = off.
        optimizer: "adamw" (fused on CUDA) or "lars" (MAE's linear probe: `MAELars`).
        momentum: LARS momentum.
        trust_coefficient: LARS trust coefficient.
    """

    blr: float | None = 1.5e-4
    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40
    min_lr: float = 0.0
    cosine_epochs: float | None = None
    layer_decay: float | None = None
    optimizer: Literal["adamw", "lars"] = "adamw"
    momentum: float = 0.9
    trust_coefficient: float = 1e-3

    def __post_init__(self):
        if self.optimizer not in ("adamw", "lars"):
            raise ConfigError(f"optim.optimizer must be 'adamw' or 'lars', got {self.optimizer!r}")
        if self.lr is None and self.blr is None:
            raise ConfigError("optim needs blr (lr = blr x effective batch / 256) or lr")
        object.__setattr__(self, "betas", tuple(self.betas))

    @classmethod
    def of(cls, value: Optimization | dict | None, default: Optimization) -> Optimization:
        """`value` as an Optimization: a dict (a saved checkpoint's hyper-parameters) fills in over `default`."""
        if value is None:
            return default
        if isinstance(value, cls):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown optim field(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**{**asdict(default), **value})

    def as_dict(self) -> dict:
        return {**asdict(self), "betas": list(self.betas)}


def weight_decay_groups(module: nn.Module, weight_decay: float, skip: set[int] | None = None) -> list[dict]:
    """MAE's (timm 0.3.2 `add_weight_decay`) rule: no decay on 1-D tensors (norms, biases) or `.bias`; frozen
    parameters (and those whose id is in `skip`) are left out of the optimizer altogether."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad or (skip and id(p) in skip):
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def layer_id(name: str, num_layers: int) -> int:
    """BEiT/MAE layer index: embeddings 0 (with data2vec 2.0's embedding LayerNorm `norm_pre`, as MIM-Refiner's
    stem), block i -> i + 1, everything after the blocks num_layers."""
    if name in ("cls_token", "pos_embed", "reg_token") or name.startswith(("patch_embed", "norm_pre")):
        return 0
    if m := re.match(r"blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    return num_layers


def layer_decay_groups(vit: nn.Module, weight_decay: float, layer_decay: float, prefix: str = "") -> list[dict]:
    """MAE's `param_groups_lrd`: lr_scale = layer_decay^(num_layers - layer_id), num_layers = depth + 1; no weight
    decay on 1-D tensors and on the position table and tokens (timm's `no_weight_decay`). Each group also lists its
    parameters' `names`."""
    num_layers = len(vit.blocks) + 1
    skip = vit.no_weight_decay()
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in vit.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim == 1 or name in skip)
        lid = layer_id(name, num_layers)
        g = groups.setdefault((lid, decay), {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
                                              "lr_scale": layer_decay ** (num_layers - lid)})
        g["params"].append(p)
        g["names"].append(prefix + name)
    return [groups[k] for k in sorted(groups)]


@torch.no_grad()
def ema_update_(target: list[torch.Tensor], online: list[torch.Tensor], momentum: float) -> None:
    """target = momentum x target + (1 - momentum) x online, in place: a momentum encoder's or an EMA's step."""
    torch._foreach_mul_(target, momentum)
    torch._foreach_add_(target, online, alpha=1 - momentum)


def warmup_cosine(step: int, warmup_steps: float, total_steps: float, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step `step`: linear warmup from 0, then half-cycle cosine to `min_ratio`."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MAELars(Lars):
    """timm's `Lars` set up to take the steps of MAE's `util/lars.py` (MoCo v3's LARS).

    MAE's rule, per parameter p with gradient g: if p.ndim > 1, d = g + wd * p and d is scaled by the trust ratio
    trust * ||p|| / ||d|| (1 when either norm is 0); parameters with ndim <= 1 get plain d = g. Then
    mu = momentum * mu + d (mu starts at 0), p -= lr * mu.

    timm's `Lars` differs in three ways, each handled here:
    - it adapts only when the group's weight_decay != 0 (unless always_adapt): with MAE's wd 0 it would be plain
      SGD. Parameters are split by ndim into groups with always_adapt True (ndim > 1) / False (ndim <= 1);
    - its ratio is trust * ||p|| / (||g|| + wd * ||p|| + eps), not trust * ||p|| / ||g + wd * p||: timm gets
      weight_decay 0 and eps 0 (its zero-norm guard still applies), and the decay is added to the gradient here,
      before timm's step, so the ratio is computed on g + wd * p exactly as MAE does;
    - it decays every parameter of a group: ndim <= 1 parameters never get decay here.
    The momentum buffer (timm: a copy of the first update; MAE: 0 * 0.9 + first update) and the SGD step agree.
    `p.grad` is left as it was (restored after the step).
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 1e-3):
        super().__init__(_split_by_ndim(params, weight_decay), lr=lr, momentum=momentum, weight_decay=0.0,
                         trust_coeff=trust_coefficient, eps=0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        undecayed = []
        for group in self.param_groups:
            wd = group["lars_weight_decay"]
            for p in group["params"]:
                if wd and p.grad is not None:
                    undecayed.append((p, p.grad))
                    p.grad = p.grad.add(p, alpha=wd)
        try:
            super().step()
        finally:
            for p, grad in undecayed:
                p.grad = grad
        return loss


def _split_by_ndim(params, weight_decay: float) -> list[dict]:
    """Each group (or the plain parameter list) -> a matrix group (adapted, decayed with the group's
    weight_decay) and a vector group (neither); other group keys such as lr are kept."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        rest = {k: v for k, v in g.items() if k not in ("params", "weight_decay")}
        members = list(g["params"])
        matrices = [p for p in members if p.ndim > 1]
        vectors = [p for p in members if p.ndim <= 1]
        if matrices:
            out.append({**rest, "params": matrices, "always_adapt": True,
                        "lars_weight_decay": float(g.get("weight_decay", weight_decay))})
        if vectors:
            out.append({**rest, "params": vectors, "always_adapt": False, "lars_weight_decay": 0.0})
    return out
