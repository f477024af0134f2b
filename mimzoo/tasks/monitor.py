"""`KNNMonitor`: the k-NN accuracy of a method's evaluated encoder during training, so a run shows whether its
representation improves while it trains (MIM-Refiner logs it every epoch)."""
from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.distributed.fsdp import FSDPModule

from .knn import check_knn, knn_predict
from .probe import feature_sets

log = logging.getLogger("mimzoo")


class KNNMonitor(L.Callback):
    """Weighted k-NN top-1 (%) of the model's `evaluated_backbone` (MIM-Refiner: its EMA; else its backbone) on a
    labelled dataset: before training (logged as one line), after every `every_n_epochs` training epochs (logged as
    `knn/top1`) and at the end, with the change since the start. Runs on rank 0's device, in bf16 on GPU.

    Args:
        data: "digits" (scikit-learn's, no download) or an ImageNet-style folder with train/ and val/.
        k, temperature: MIM-Refiner's 10 and 0.07.
        pooling: the feature (`mimzoo.tasks.pooling.POOLINGS`); MIM-Refiner's is the last block's cls token before
            the final norm ("cls_prenorm").
        standardize: standardise the features with the training split's statistics first (MIM-Refiner).
        every_n_epochs: measure after every n-th epoch.
        batch_size, workers: of the feature extraction.
    """

    def __init__(self, data: str = "digits", k: int = 10, temperature: float = 0.07, pooling: str = "cls_prenorm",
                 standardize: bool = True, every_n_epochs: int = 1, batch_size: int = 128, workers: int = 0):
        check_knn([k], temperature)
        self.data, self.k, self.temperature, self.pooling = data, k, temperature, pooling
        self.standardize, self.every_n_epochs = standardize, every_n_epochs
        self.batch_size, self.workers = batch_size, workers
        self.first: float | None = None
        self.last: float | None = None

    @torch.no_grad()
    def measure(self, pl_module: L.LightningModule) -> float:
        vit = getattr(pl_module, "evaluated_backbone", None)
        vit = pl_module.backbone if vit is None else vit
        was_training = vit.training
        sharded = isinstance(pl_module, FSDPModule)  # FSDP2: the root's own parameters are gathered only in forward
        if sharded:
            pl_module.unshard()
        try:
            sets = feature_sets(vit, self.data, [self.pooling], self.batch_size, self.workers, progress=False,
                                device=pl_module.device)
        finally:
            vit.train(was_training)  # the online encoder goes on training as it was
            if sharded:
                pl_module.reshard()
        xtr, ytr, xte, yte = sets[self.pooling]
        pred = knn_predict(xtr, ytr, xte, k=self.k, temperature=self.temperature, standardize=self.standardize)
        return round((pred == yte).float().mean().item() * 100, 2)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.first is None:
            self.first = self.measure(pl_module)
            log.info(f"k-NN top-1 on {self.data} before training: {self.first:.2f}%")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        acc = self.measure(pl_module) if trainer.is_global_zero else 0.0
        self.last = acc
        pl_module.log("knn/top1", acc, rank_zero_only=True)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.first is not None and self.last is not None:
            log.info(f"k-NN top-1 on {self.data}: {self.first:.2f}% before training, {self.last:.2f}% after "
                     f"({self.last - self.first:+.2f})")

    def state_dict(self) -> dict:
        return {"first": self.first}

    def load_state_dict(self, state: dict) -> None:
        self.first = state.get("first")
