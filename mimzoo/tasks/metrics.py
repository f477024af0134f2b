"""Dense-task metrics as torchmetrics `Metric`s (states reduce correctly across DDP processes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

DEPTH_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


class DepthMetrics(Metric):
    """NYUv2 depth metrics, computed per image over its valid pixels (target > 0) and averaged over images.
    `update(pred, target)` with (B, H, W) or (B, 1, H, W) depths; `compute()` -> dict of DEPTH_KEYS."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for key in DEPTH_KEYS:
            self.add_state(key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.reshape(target.shape[0], -1).double(), target.reshape(target.shape[0], -1).double()
        valid = target > 0
        n = valid.sum(1).clamp(min=1)
        has = valid.any(1)
        p = torch.where(valid, pred.clamp(min=1e-6), torch.ones_like(pred))
        t = torch.where(valid, target, torch.ones_like(target))
        mean = lambda x: (x * valid).sum(1) / n  # noqa: E731
        ratio = torch.maximum(p / t, t / p)
        per_image = {
            "abs_rel": mean((p - t).abs() / t), "sq_rel": mean((p - t) ** 2 / t),
            "rmse": mean((p - t) ** 2).sqrt(), "rmse_log": mean((p.log() - t.log()) ** 2).sqrt(),
            "log10": mean((p.log10() - t.log10()).abs()),
            "delta1": mean((ratio < 1.25).double()), "delta2": mean((ratio < 1.25 ** 2).double()),
            "delta3": mean((ratio < 1.25 ** 3).double()),
        }
        for key, values in per_image.items():
            setattr(self, key, getattr(self, key) + values[has].sum())
        self.images += has.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        return {key: (getattr(self, key) / self.images.clamp(min=1)).float() for key in DEPTH_KEYS}


class SurfaceNormalMetrics(Metric):
    """Angular error (degrees) over all valid pixels of the dataset (target with non-zero norm): mean, median,
    rmse and the percentage below 11.25, 22.5 and 30 degrees. `update(pred, target)` with (B, 3, H, W) normals;
    predictions are normalised here."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("errors", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target.norm(dim=1) > 0
        cos = (F.normalize(pred.double(), dim=1) * F.normalize(target.double(), dim=1)).sum(1).clamp(-1, 1)
        self.errors.append(torch.rad2deg(torch.acos(cos[valid])).float())

    def compute(self) -> dict[str, torch.Tensor]:
        e = dim_zero_cat(self.errors).double()
        n = e.numel()
        # the usual median (mean of the two middle values), without sorting or quantile's size limit
        median = (e.kthvalue((n + 1) // 2).values + e.kthvalue(n // 2 + 1).values) / 2
        return {"mean": e.mean(), "median": median, "rmse": (e ** 2).mean().sqrt(),
                "pct_11_25": (e < 11.25).double().mean() * 100, "pct_22_5": (e < 22.5).double().mean() * 100,
                "pct_30": (e < 30).double().mean() * 100}
