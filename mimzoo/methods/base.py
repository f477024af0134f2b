"""What every method (pretraining or fine-tuning) shares: the backbone, AdamW with MAE's groups, the per-step warmup-cosine
schedule, the lr scaling rule, and enough metadata in checkpoints for `mimzoo.load` to rebuild the model."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from ..checkpoint import atomic_path, write_safetensors
from ..models import ViT, create_vit


def build_backbone(backbone: str | dict, backbone_kwargs: dict | None = None) -> ViT:
    """A registry name (vit_base_patch16) plus overrides, or a full ViT config dict."""
    if isinstance(backbone, dict):
        return ViT(**{**backbone, **(backbone_kwargs or {})})
    return create_vit(backbone, **(backbone_kwargs or {}))


def pretrained_or_built(backbone: str | dict, backbone_kwargs: dict | None, pretrained: str | None,
                        **load_kwargs) -> ViT:
    """`pretrained` weights through `mimzoo.load` when given, else the architecture `backbone` (random init)."""
    if pretrained is None:
        return build_backbone(backbone, backbone_kwargs)
    from ..loading import load

    return load(pretrained, **load_kwargs)


class Augmentation(nn.Module):
    """Holds an augmentation pipeline outside the state dict and the optimizer: Kornia's RandAugment carries
    (learnable) policy parameters that are not model weights and would break strict checkpoint loading.
    Device moves and train/eval still reach it."""

    def __init__(self, pipeline: nn.Module):
        super().__init__()
        self.__dict__["pipeline"] = pipeline.requires_grad_(False)

    def _apply(self, fn, recurse=True):
        self.pipeline._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self.pipeline.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline(x)


def weight_decay_groups(module: nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict]:
    """MAE's (timm 0.3.2 `add_weight_decay`) rule: no decay on 1-D tensors (norms, biases) or `.bias`; frozen
    parameters are left out of the optimizer altogether."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def warmup_cosine(step: int, warmup_steps: float, total_steps: float, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step `step`: linear warmup from 0, then half-cycle cosine to `min_ratio`."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Method(L.LightningModule):
    """Base of the methods. Subclasses build their parts in `__init__`, implement `training_loss` and may
    override `optimizer_groups` (fine-tuning does, for layer-wise lr decay).

    Optimisation (explicit, no hidden defaults): AdamW(betas) on `weight_decay_groups`;
    lr = blr * effective batch / 256 unless `lr` is given, effective batch = per-device batch x devices x nodes x
    gradient accumulation; per-step linear warmup over `warmup_epochs`, then cosine to `min_lr`.
    """

    backbone: ViT  # set by the subclass; hparams must hold blr, lr, weight_decay, betas, warmup_epochs, min_lr

    # -- optimisation -----------------------------------------------------------------------------------------
    def effective_batch_size(self) -> int:
        trainer = self.trainer
        batch = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
        if batch is None:
            if trainer.train_dataloader is None:
                trainer.fit_loop.setup_data()  # idempotent; Lightning would load it a moment later anyway
            loader = trainer.train_dataloader
            batch = getattr(loader, "batch_size", None)
        if batch is None:
            raise ValueError("cannot tell the per-device batch size: give the datamodule a `batch_size` "
                             "attribute or set `lr` explicitly")
        return batch * trainer.world_size * trainer.accumulate_grad_batches

    def learning_rate(self) -> float:
        hp = self.hparams
        return hp.lr if hp.lr is not None else hp.blr * self.effective_batch_size() / 256

    def optimizer_groups(self) -> list[dict]:
        return weight_decay_groups(self, self.hparams.weight_decay)

    def build_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        """AdamW (fused on CUDA); the linear probe overrides this with LARS."""
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas), fused=self.device.type == "cuda")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches
        lr = self.learning_rate()
        groups = self.optimizer_groups()
        for g in groups:  # per-group scales (layer-wise decay) are applied once, on the base lr
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        optimizer = self.build_optimizer(groups, lr)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = hp.warmup_epochs * total / epochs
        if hp.get("cosine_epochs"):  # CroCo stops training half-way down a longer cosine
            total = hp.cosine_epochs * total / epochs
        min_ratio = hp.min_lr / lr if lr > 0 else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def validation_noise(self, batch_size: int, device, batch_idx: int) -> torch.Tensor:
        """The same masks at every validation, so losses and pictures are comparable across epochs."""
        g = torch.Generator(device="cpu").manual_seed(batch_idx)
        return torch.rand(batch_size, self.backbone.num_patches, generator=g).to(device)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def mimzoo_config(self) -> dict:
        """Enough for mimzoo.load to rebuild the backbone (and the method) without the training config."""
        # LightningCLI adds `_class_path` to the hyperparameters: not a constructor argument
        return {"backbone": dict(self.backbone._hub_mixin_config),
                "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "hyper_parameters": {k: v for k, v in self.hparams.items() if not k.startswith("_")}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mimzoo"] = self.mimzoo_config()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """config.json + model.safetensors (huggingface_hub's layout); `mimzoo.load(dir)` gives the backbone,
        `mimzoo.load(dir, model="pretrainer")` or `Class.from_pretrained(dir)` the method."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(self.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps({"format": "mimzoo", **self.mimzoo_config()}, indent=2, default=list))
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> "Method":
        from ..loading import load

        model = load(name_or_path, model="pretrainer", **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{name_or_path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """save_pretrained into a temporary folder and upload it as one commit; returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message="mimzoo save_pretrained"))

    def on_fit_start(self) -> None:
        # Lightning keeps the train/eval modes it finds, and `mimzoo.load` returns modules in eval mode: without
        # this a loaded backbone would train with drop path (and any dropout) switched off
        self.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if batch["image"].shape[0] == 0:  # every image of this batch was corrupt (already counted and reported)
            return None
        out = self.training_loss(batch)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        # not on the progress bar: that would read the loss back from the device every step
        self.log("train/loss", loss, batch_size=batch["image"].shape[0])
        return loss
