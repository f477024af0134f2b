"""Linear probing on cached features: MAE's head and LARS (`linear_probe_on_features`) and MIM-Refiner's SGD grid
(`linear_grid_on_features`); `mimzoo.methods.LinearProbe` trains the same head end to end, with augmentation.

MAE's protocol (paper Table 10, FINETUNE.md, `main_linprobe.py`).

The recipe: pooled feature (cls token after the final norm by default) -> parameter-free BatchNorm1d(eps 1e-6) ->
Linear (trunc-normal std 0.01, zero bias); LARS with momentum 0.9, trust coefficient 0.001, weight decay 0, no decay
and no lr adaptation for parameters with ndim <= 1; lr = blr * batch / 256 with blr 0.1 at batch 16384, 90 epochs,
10 of per-step linear warmup then half-cycle cosine to 0; cross-entropy; RandomResizedCrop(224, 0.08-1, bicubic) +
flip for training, resize 256 + centre crop 224 for evaluation.

The head, the optimiser and the schedule are shared with `mimzoo.methods.LinearProbe`.
"""
from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..optim import MAELars, warmup_cosine
from .features import check_labels

log = logging.getLogger("mimzoo")


def check_linear(epochs, batch_size) -> None:
    """A head trained for no step reports the accuracy of its random initialisation: refuse it."""
    for name, value in (("epochs", epochs), ("probe batch size", batch_size)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"linear probe: {name} must be a positive integer; got {value!r}")


def note_clamps(train_labels: torch.Tensor, test_labels: torch.Tensor, batch_size: int,
                num_classes: int | None = None) -> None:
    """One log line for each setting the data is too small for: a batch larger than the training set (one batch
    of all of it per step) and top-5 over fewer than 5 classes (the top k = classes, always 100 %)."""
    n = len(train_labels)
    if batch_size > n:
        log.warning(f"linear probe: probe batch size {batch_size} is more than the {n} training samples; using "
                    f"{n} (one step per epoch)")
    classes = int(num_classes or max(int(train_labels.max()), int(test_labels.max())) + 1)
    if classes < 5:
        log.warning(f"linear probe: top-5 accuracy over {classes} classes counts the top {classes}, so it is "
                    f"100 % by construction")


class ProbeHead(nn.Module):
    """MAE's probe head: BatchNorm1d without affine parameters (eps 1e-6) whitens each feature dimension, which
    makes one lr fit backbones whose features have very different scales; then a Linear layer (trunc-normal
    std 0.01 as in MoCo v3, zero bias)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(features))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Percentage of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item() * 100


def train_heads(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                test_labels: torch.Tensor, lrs: Sequence[float], optimizer: str, *, epochs: int, batch_size: int,
                warmup_epochs: float, weight_decay: float = 0.0, momentum: float = 0.9, trust_coefficient: float = 1e-3,
                min_lr: float = 0.0, num_classes: int | None = None, seed: int = 0,
                device: str | None = None) -> list[dict]:
    """One `ProbeHead` per lr, trained side by side on the same batches (the same result as separate runs with the
    same seed, for one feature pass per step), with "lars" (`MAELars`) or "sgd" (momentum) and the per-step
    `warmup_cosine` schedule; evaluated with BatchNorm on its running statistics. Like MAE's loader, each epoch is
    a fresh random permutation with the last incomplete batch dropped (kept when the set is smaller than a batch)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x, y = train_feats.float().to(device), train_labels.long().to(device)
    num_classes = int(num_classes or max(int(y.max()), int(test_labels.max())) + 1)
    batch_size = min(batch_size, len(x))
    steps_per_epoch = len(x) // batch_size
    heads = nn.ModuleList()
    for _ in lrs:
        with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
            torch.manual_seed(seed)
            heads.append(ProbeHead(x.shape[1], num_classes).to(device))
    groups = [{"params": list(h.parameters()), "lr": lr} for h, lr in zip(heads, lrs)]
    if optimizer == "lars":
        opt = MAELars(groups, lr=lrs[0], weight_decay=weight_decay, momentum=momentum,
                      trust_coefficient=trust_coefficient)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    else:
        raise ConfigError(f"optimizer must be 'lars' or 'sgd', got {optimizer!r}")
    total, warmup = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch
    # min_lr is absolute: each group's ratio is min_lr / its own lr
    ratios = [min_lr / g["lr"] if g["lr"] > 0 else 0.0 for g in opt.param_groups]
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, r=r: warmup_cosine(s, warmup, total, r) for r in ratios])
    order = torch.Generator(device="cpu").manual_seed(seed)
    heads.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            # heads share no parameters: the summed loss gives each its own gradient
            loss = sum(F.cross_entropy(h(x[idx]), y[idx]) for h in heads)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    heads.eval()
    labels, results = test_labels.long().cpu(), []
    with torch.no_grad():
        for head, lr in zip(heads, lrs):
            logits = head(test_feats.float().to(device)).cpu()
            results.append({"top1": round(topk_accuracy(logits, labels, 1), 2),
                            "top5": round(topk_accuracy(logits, labels, 5), 2), "lr": lr, "epochs": epochs,
                            "batch_size": batch_size})
    return results


def linear_probe_on_features(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                          test_labels: torch.Tensor, *, epochs: int = 90, lr: float = 6.4, batch_size: int = 256,
                          warmup_epochs: float = 10, weight_decay: float = 0.0, momentum: float = 0.9,
                          trust_coefficient: float = 1e-3, min_lr: float = 0.0,
                          num_classes: int | None = None, seed: int = 0, device: str | None = None) -> dict:
    """MAE's head and optimiser (`ProbeHead`, `MAELars`, warmup + cosine) on cached features, as `LinearProbe`
    trains it but without augmentation. Returns top-1/top-5 (%) and the settings used; deterministic per seed.

    The default lr, 6.4, is the lr MAE's probe trains with (blr 0.1 x 16384 / 256), kept as is for the smaller
    batches that give a small dataset enough steps: LARS moves a weight matrix by lr * trust_coefficient of its
    norm per step whatever the batch, and the blr rule at batch 256 (lr 0.1) leaves the head next to its
    initialisation after 90 epochs of a few steps (digits: 28 % top-1 against 69 % at 6.4). Pass
    lr = blr * batch_size / 256 for MAE's rule."""
    check_linear(epochs, batch_size)
    check_labels(train_labels, test_labels, warn=False)
    note_clamps(train_labels, test_labels, batch_size, num_classes)
    return train_heads(train_feats, train_labels, test_feats, test_labels, [lr], "lars", epochs=epochs,
                       batch_size=batch_size, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                       momentum=momentum, trust_coefficient=trust_coefficient, min_lr=min_lr,
                       num_classes=num_classes, seed=seed, device=device)[0]


# MIM-Refiner's (DINOv2-style) probe grid: SGD momentum 0.9, 50 epochs, batch 1024, 10 % warmup + cosine
MIM_REFINER_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def linear_grid_on_features(features: dict[str, tuple[torch.Tensor, torch.Tensor]], train_labels: torch.Tensor,
                      test_labels: torch.Tensor, *, lrs: Sequence[float] = MIM_REFINER_LRS, epochs: int = 50,
                      batch_size: int = 1024, seed: int = 0, device: str | None = None) -> dict:
    """MIM-Refiner's linear-probe grid: for each named feature (e.g. "cls", "cls_avg": (train, test) tensors) and
    each lr, BN(no affine) + linear trained with SGD (momentum 0.9, no weight decay), 10 % warmup then cosine; the
    reported number is the best of the grid. Returns {"best": {...}, "grid": [{feature, lr, top1, top5}, ...]}."""
    check_linear(epochs, batch_size)
    if not features or not lrs:
        raise ConfigError(f"the linear grid needs at least one feature and one lr; got {list(features)}, {list(lrs)}")
    check_labels(train_labels, test_labels, warn=False)
    note_clamps(train_labels, test_labels, batch_size)
    grid = []
    for name, (train, test) in features.items():
        for r in train_heads(train, train_labels, test, test_labels, lrs, "sgd", epochs=epochs,
                             batch_size=batch_size, warmup_epochs=0.1 * epochs, seed=seed, device=device):
            grid.append({"feature": name, **r})
    best = max(grid, key=lambda r: r["top1"])
    return {"best": best, "grid": grid}
