"""Frozen features on several devices through Lightning: `Trainer.predict` under `ddp_spawn` (a library call
cannot re-launch its caller's script, as plain `ddp` does), each process extracting its share of the samples
(Lightning's unrepeated distributed sampler: every sample once) and writing it to a file, the shares put back in
the dataset's order by each sample's "index"."""
from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .pooling import model_input, pooled


class FeatureExtractor(L.LightningModule):
    """predict_step: {"features", "label", "index"} of a batch {"image": uint8 or normalised, "label", "index"}."""

    def __init__(self, vit: torch.nn.Module, pooling: str):
        super().__init__()
        self.vit, self.pooling = vit.eval(), pooling

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict | None:
        images = batch["image"]
        if len(images) == 0:  # every image of the batch was unreadable (`collate_images`)
            return {"skipped": int(batch.get("skipped", 0))}
        features = pooled(self.vit, model_input(self.vit, images), self.pooling).float()
        return {"features": features, "label": batch["label"], "index": batch["index"],
                "skipped": int(batch.get("skipped", 0))}


class ShareWriter(BasePredictionWriter):
    """Each process's features, labels and sample indices to <folder>/rank<r>.safetensors."""

    def __init__(self, folder: Path):
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        kept = [p for p in predictions if "features" in p]
        width = kept[0]["features"].shape[1] if kept else 0
        share = {"features": torch.cat([p["features"].cpu() for p in kept]) if kept else torch.zeros(0, width),
                 "labels": torch.cat([p["label"].cpu() for p in kept]) if kept else torch.zeros(0, dtype=torch.long),
                 "index": torch.cat([torch.as_tensor(p["index"]).cpu() for p in kept]) if kept
                 else torch.zeros(0, dtype=torch.long),
                 "skipped": torch.tensor([sum(p["skipped"] for p in predictions)])}
        save_file(share, str(self.folder / f"rank{trainer.global_rank}.safetensors"))


def extract_on_devices(vit: torch.nn.Module, loader: DataLoader, pooling: str, devices: int, device: str = "cpu",
                       progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features, labels, unreadable images skipped) of `loader`'s dataset on `devices` devices of the kind of
    `device` ("cuda..." or "cpu" processes), in the order a single process gives (the items must carry their
    "index"). bf16 autocast on GPUs, fp32 elsewhere, as `features.extract`."""
    if not isinstance(loader, DataLoader):
        raise ConfigError("features on several devices need a DataLoader over a dataset whose items carry 'index'")
    accelerator = "gpu" if str(device).startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="mimzoo-features-") as tmp:
        trainer = L.Trainer(accelerator=accelerator, devices=devices, precision=precision(accelerator),
                            strategy="ddp_spawn" if devices > 1 else "auto", logger=False,
                            enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                            callbacks=[ShareWriter(Path(tmp))], default_root_dir=tmp)
        trainer.predict(FeatureExtractor(vit, pooling), dataloaders=loader, return_predictions=False)
        shares = [load_file(str(f)) for f in sorted(Path(tmp).glob("rank*.safetensors"))]
    if len(shares) != trainer.world_size:
        raise RuntimeError(f"feature extraction on {devices} devices wrote {len(shares)} of {trainer.world_size} "
                           "shares")
    index = torch.cat([s["index"] for s in shares])
    order = torch.argsort(index)
    if len(index.unique()) != len(index):
        raise ConfigError("the loader's items repeat an 'index': features on several devices cannot be ordered")
    features, labels = torch.cat([s["features"] for s in shares]), torch.cat([s["labels"] for s in shares])
    return features[order], labels[order], int(sum(s["skipped"].item() for s in shares))


def precision(accelerator: str) -> str:
    """bf16 autocast on GPUs (as `features.extract` uses on CUDA), fp32 elsewhere."""
    return "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"
