"""Linear probing of a frozen backbone, MAE's protocol (paper Table 10, FINETUNE.md, `main_linprobe.py`).

The recipe: pooled feature (cls token after the final norm by default) -> parameter-free BatchNorm1d(eps 1e-6) ->
Linear (trunc-normal std 0.01, zero bias); LARS with momentum 0.9, trust coefficient 0.001, weight decay 0, no decay
and no lr adaptation for parameters with ndim <= 1; lr = blr * batch / 256 with blr 0.1 at batch 16384, 90 epochs,
10 of per-step linear warmup then half-cycle cosine to 0; cross-entropy; RandomResizedCrop(224, 0.08-1, bicubic) +
flip for training, resize 256 + centre crop 224 for evaluation.

Two entry points share the head, the optimizer and the schedule: `LinearProbe`, a LightningModule that augments
images on the device (the real protocol), and `linear_probe_features`, which trains the head on cached features
without augmentation (a fast estimate, used by `mimzoo probe linear`).
"""
from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import nn

from ..methods.base import Augmentation, pretrained_or_built, warmup_cosine
from ..methods.finetune import Classifier, eval_views
from ..models import ViT
from .features import pooled

POOLINGS = ("cls", "avg")


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


def probe_views(image_size: int, mean, std) -> tuple[Augmentation, Augmentation]:
    """(train, eval) Kornia pipelines on float images in [0, 1]: RandomResizedCrop(scale 0.08-1, bicubic) + flip,
    and MAE's evaluation transform (`eval_views`)."""
    train = K.AugmentationSequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.08, 1.0), resample="bicubic"),
        K.RandomHorizontalFlip(), K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return Augmentation(train), eval_views(image_size, mean, std)


class LinearProbe(Classifier):
    """A linear classifier on a frozen backbone, MAE's linear-probe protocol (defaults = its ViT-B numbers).

    `pretrained`: the backbone's weights (zoo name, checkpoint file or folder, loaded with `mimzoo.load` and
    resized to `image_size`); without it `backbone` is an architecture name or config dict (random init: a
    baseline, and how `mimzoo.load(..., model="pretrainer")` rebuilds a saved probe).
    `pooling`: "cls" (the cls token after the final norm, MAE's default) or "avg" (mean of the patch tokens
    after the final norm; the only choice for backbones without a cls token, e.g. CroCo).

    The backbone has no gradients, is not in the optimizer and always runs in eval mode. MAE keeps the whole
    model in train mode while probing (issue #54), which only matters for the head's BatchNorm (batch statistics
    in training, running statistics in evaluation, as here): its ViT has no dropout or drop path at probe time, so
    eval mode gives the same features, and it keeps them deterministic for backbones built with drop path.

    Checkpoints hold the whole state dict (backbone included), so `mimzoo.load(ckpt)` gives the backbone and
    `mimzoo.load(ckpt, model="pretrainer")` the probe without fetching `pretrained` again.
    """

    def __init__(
        self,
        backbone: str | dict = "vit_base_patch16",
        backbone_kwargs: dict | None = None,
        pretrained: str | None = None,
        num_classes: int = 1000,
        pooling: str = "cls",
        image_size: int = 224,
        blr: float = 0.1,
        lr: float | None = None,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        warmup_epochs: float = 10,
        min_lr: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        encoder = pretrained_or_built(backbone, backbone_kwargs, pretrained, img_size=image_size)
        if pooling == "cls" and not encoder.num_prefix_tokens:
            raise ValueError("this backbone has no cls token: use pooling='avg'")
        self.backbone: ViT = encoder.requires_grad_(False).eval()
        self.head = ProbeHead(encoder.embed_dim, num_classes)
        self.setup_classification(num_classes, *probe_views(image_size, encoder.data_config["mean"],
                                                            encoder.data_config["std"]))

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()
        return self

    def build_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        hp = self.hparams
        return MAELars(groups, lr=lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
                       trust_coefficient=hp.trust_coefficient)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return pooled(self.backbone, images, self.hparams.pooling).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def training_loss(self, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])



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
        raise ValueError(f"optimizer must be 'lars' or 'sgd', got {optimizer!r}")
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


def linear_probe_features(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
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
    return train_heads(train_feats, train_labels, test_feats, test_labels, [lr], "lars", epochs=epochs,
                       batch_size=batch_size, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
                       momentum=momentum, trust_coefficient=trust_coefficient, min_lr=min_lr,
                       num_classes=num_classes, seed=seed, device=device)[0]


# MIM-Refiner's (DINOv2-style) probe grid: SGD momentum 0.9, 50 epochs, batch 1024, 10 % warmup + cosine
MIM_REFINER_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def linear_probe_grid(features: dict[str, tuple[torch.Tensor, torch.Tensor]], train_labels: torch.Tensor,
                      test_labels: torch.Tensor, *, lrs: Sequence[float] = MIM_REFINER_LRS, epochs: int = 50,
                      batch_size: int = 1024, seed: int = 0, device: str | None = None) -> dict:
    """MIM-Refiner's linear-probe grid: for each named feature (e.g. "cls", "cls_avg": (train, test) tensors) and
    each lr, BN(no affine) + linear trained with SGD (momentum 0.9, no weight decay), 10 % warmup then cosine; the
    reported number is the best of the grid. Returns {"best": {...}, "grid": [{feature, lr, top1, top5}, ...]}."""
    grid = []
    for name, (train, test) in features.items():
        for r in train_heads(train, train_labels, test, test_labels, lrs, "sgd", epochs=epochs,
                             batch_size=batch_size, warmup_epochs=0.1 * epochs, seed=seed, device=device):
            grid.append({"feature": name, **r})
    best = max(grid, key=lambda r: r["top1"])
    return {"best": best, "grid": grid}
