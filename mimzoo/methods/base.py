"""The contract every method (pretraining or downstream) shares.

- One backbone signature: `backbone` (architecture name or ViT config dict), `backbone_kwargs`, `weights` (None, a
  zoo name, a path in any supported format, or `hf-hub:`). With `weights` the architecture of every part the file
  holds comes from the file, and every part the method also has is loaded (`init_backbone`, `file_part`,
  `load_file_parts`); one log line says what came from the file and what from init.
- One optimisation group (`optim`, a `mimzoo.optim.Optimization`) read in `configure_optimizers`.
- One hook that turns a uint8 batch into the method's views (`make_views`, called from `on_after_batch_transfer`).
- `training_loss(batch)` returns an output object with `.loss`.
- A registry name (`name`) and `from_converted`, how `mimzoo.load(..., model="pretrainer")` rebuilds the method.
- Checkpoints carry enough (`mimzoo_config`) for `mimzoo.load` to rebuild backbone and method without the recipe.
"""
from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from .. import cards, loading
from ..checkpoint import load_strict, write_folder
from ..errors import ConfigError
from ..loading import Converted
from ..models import ViT
from ..optim import MAELars, Optimization, layer_decay_groups, warmup_cosine, weight_decay_groups

log = logging.getLogger("mimzoo")


@dataclass
class LossOutput:
    """What `training_loss` returns when a method has nothing more to report than its loss."""
    loss: torch.Tensor


class Method(L.LightningModule):
    """Base of the methods. A subclass sets `name`, builds its parts in `__init__` (starting with
    `init_backbone` and `init_optim`, ending with `load_file_parts`), implements `make_views` and
    `training_loss`, and may override `converted_kwargs` (what an upstream file records of its hyper-parameters).

    Optimisation (`optim`, no hidden defaults: each method's signature shows its paper's values): AdamW(betas) on
    MAE's weight-decay groups (or LARS, or layer-wise decay); lr = blr x effective batch / 256 unless `lr` is
    given, effective batch = per-device batch x devices x nodes x gradient accumulation; per-step linear warmup
    over `warmup_epochs`, then cosine to `min_lr` (over `cosine_epochs` when set).
    """

    name: ClassVar[str]  # the registry name, `mimzoo.methods.METHODS[name]`
    backbone: ViT
    optim: Optimization
    backbone_part: str = "backbone"  # the child that is evaluated and that mimzoo.load gives (MIM-Refiner: its EMA)

    # -- construction -----------------------------------------------------------------------------------------
    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, except that `weights` is recorded as the name it was given (a zoo name, a path), never as
        the tensors of an already read file (which Lightning would deep-copy and pickle)."""
        frame = frame or inspect.currentframe().f_back
        weights = frame.f_locals.get("weights")
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or ())
        super().save_hyperparameters(*args, ignore=[*ignore, "weights"], frame=frame, logger=logger)
        if "weights" in inspect.signature(type(self).__init__).parameters:
            self._set_hparam("weights", str(weights.source) if isinstance(weights, Converted) else weights)

    def init_backbone(self, backbone: str | dict | None, backbone_kwargs: dict | None,
                      weights: str | os.PathLike | Converted | None, *, default: str = "vit_base_patch16",
                      defaults: dict | None = None, hints: dict | None = None, **overrides) -> ViT:
        """Set `self.backbone` from `weights` (the file's architecture, checked against any explicit argument) or
        from the architecture (`default` and `defaults` when `backbone` / `backbone_kwargs` leave them open).
        `overrides` are the behaviour arguments the method itself decides (e.g. `img_size`, `drop_path_rate`)."""
        self.backbone, self.weights_file = loading.backbone_for(backbone, backbone_kwargs, weights, default=default,
                                                                defaults=defaults, hints=hints, **overrides)
        self._from_file, self._from_init, self._notes = ["backbone"] if self.weights_file else [], [], []
        self._skipped: set[str] = set()  # parts of the file of another kind (already noted)
        self._loaded_by_method: set[str] = set()  # parts the method loads from the file itself (and reports)
        return self.backbone

    def init_optim(self, optim: Optimization | dict | None) -> Optimization:
        """`self.optim` from the argument (a dict from a saved checkpoint fills in over this method's defaults);
        stored in the hyper-parameters as a plain dict, so checkpoints stay loadable with weights_only."""
        default = inspect.signature(type(self).__init__).parameters["optim"].default
        self.optim = Optimization.of(optim, default)
        self._set_hparam("optim", self.optim.as_dict())
        return self.optim

    def compiled(self, forward: Callable, compile: bool | str) -> Callable:
        """The step a method runs. compile: False (eager), True (`torch.compile` of the whole forward: one graph)
        or "regional" (each block of every `blocks` list compiled on its own; the blocks of one list share a
        graph, so it compiles once per list: on 2 CPU cores with an empty inductor cache, the first MAE ViT-B/16
        step took 21.8 s against 43.1 s for the whole forward, and later steps were as fast, 1493 vs 1488 ms;
        `benchmarks/compile_time.py`)."""
        if compile == "regional":
            for name, blocks in self.named_modules():
                if name.rpartition(".")[2] == "blocks" and isinstance(blocks, (torch.nn.ModuleList,
                                                                               torch.nn.Sequential)):
                    for block in blocks:
                        block.compile()
            return forward
        if compile is True:
            return torch.compile(forward)
        if compile is False or compile is None:
            return forward
        raise ConfigError(f"compile must be false, true or 'regional'; got {compile!r}")

    def file_part(self, name: str, kind: str | None = None, **explicit) -> dict:
        """The configuration of part `name` (e.g. the decoder): for each field, the explicit argument, else the
        file's value (when `weights` holds such a part of this `kind`), else the method's default. `explicit`
        maps field -> (argument or None, default). An explicit argument that contradicts the file is an error; the
        resolved values are written back to the hyper-parameters (`<name>_<field>`) so that saved checkpoints
        rebuild the same model."""
        stored = (self.weights_file.config.get(name) if self.weights_file is not None else None) or {}
        usable = bool(stored) and (kind is None or stored.get("kind", kind) == kind)
        if stored and not usable:
            self._notes.append(f"the file's {name} is a {stored.get('kind')} {name}, not {kind}: not used")
            self._skipped.add(name)
        out = {}
        for field, (value, default) in explicit.items():
            held = stored.get(field) if usable else None
            if value is not None and held is not None and value != held:
                raise ConfigError(f"{name}_{field}={value!r} contradicts {self.weights_file.source}, whose {name} has "
                                  f"{field}={held!r}: with weights the file decides the architecture; drop the "
                                  f"argument or choose other weights")
            out[field] = value if value is not None else held if held is not None else default
            self._set_hparam(f"{name}_{field}", out[field])
        return out

    def file_fact(self, name: str, value, default):
        """A hyper-parameter the file records (e.g. `norm_pix_loss`): the explicit argument wins, then the file's
        record (an upstream converter's or the zoo's), then the default; written back to the hyper-parameters."""
        held = self.weights_file.fact(name) if self.weights_file is not None else None
        if value is not None and held is not None and value != held:
            self._notes.append(f"{name}={value!r} (the file was trained with {held!r})")
        out = value if value is not None else held if held is not None else default
        self._set_hparam(name, out)
        return out

    def load_file_parts(self, derived: dict[str, Callable[[], None]] | None = None) -> None:
        """Load every part (top-level child: decoder, heads, momentum copies) the file holds that this method also
        has with the same keys and shapes; log one line of what came from the file and what from init.

        Args:
            derived: parts made from the others when the file does not hold them, e.g. {"momentum": copy the
                online weights} (a momentum target starts as a copy of what the file gave the online branch).
        """
        if self.weights_file is None:
            return
        self.weights_source = str(self.weights_file.source)
        self.provenance = cards.provenance(self.weights_file.config, self.weights_file.source)
        held = self.weights_file.parts()
        for name, child in self.named_children():
            own = child.state_dict()
            if name == "backbone" or not own or name in self._loaded_by_method:
                continue
            weights = {} if name in self._skipped else self.weights_file.part(name)
            if weights and weights.keys() == own.keys() and all(weights[k].shape == own[k].shape for k in own):
                child.load_state_dict(weights, strict=True)
                self._from_file.append(name)
            else:
                self._from_init.append(name)
                if weights:
                    self._notes.append(f"the file's {name} does not fit ({_mismatch(weights, own)})")
        for name, make in (derived or {}).items():
            if name in self._from_init:
                make()
                self._from_init.remove(name)
                self._notes.append(f"{name} copied from the online weights")
        unused = [p for p in held if not hasattr(self, p)]
        if unused:
            self._notes.append(f"{type(self).__name__} has no {', '.join(unused)}: not used")
        if rank_zero_only.rank == 0:
            log.info(self.start_report())
        self.weights_file = None  # the file's tensors are not kept twice

    def start_report(self) -> str:
        """One line: which parts came from the file, which from init, and why."""
        if not self._from_file:
            return f"{type(self).__name__}: every part from init"
        line = f"{type(self).__name__}: {', '.join(self._from_file)} from {self.weights_source}"
        line += f"; {', '.join(self._from_init)} from init" if self._from_init else "; nothing from init"
        return line + (f" ({'; '.join(self._notes)})" if self._notes else "")

    def _set_hparam(self, key: str, value) -> None:
        # Lightning logs `hparams_initial` and checkpoints `hparams`: both show what the model really is
        self.hparams[key] = value
        if getattr(self, "_hparams_initial", None) is not None:
            self._hparams_initial[key] = value

    # -- the registry contract --------------------------------------------------------------------------------
    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        """Constructor arguments an upstream file records (beyond its architecture). Default: the view size is
        the backbone's input size."""
        params = inspect.signature(cls.__init__).parameters
        return {"image_size": config["backbone"].get("img_size", 224)} if "image_size" in params else {}

    @classmethod
    def from_converted(cls, converted: Converted, **overrides) -> Method:
        """Rebuild this method from a converted file, strictly: every tensor of the file goes into the model and
        every tensor of the model comes from the file. `overrides`: loading.BEHAVIOUR / AFTER backbone arguments
        (drop_path_rate, img_size, ...) and any constructor argument of the method."""
        config = converted.config
        params = inspect.signature(cls.__init__).parameters
        if "hyper_parameters" in config:  # written by a mimzoo method
            kwargs = {k: v for k, v in config["hyper_parameters"].items() if k in params}
        else:
            kwargs = cls.converted_kwargs(config)
        backbone_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in loading.BEHAVIOUR | loading.AFTER
                           and k not in params}
        unknown = set(overrides) - set(params)
        if unknown:
            raise ConfigError(f"{cls.__name__} takes no {sorted(unknown)}; it takes {sorted(params)[1:]} and the "
                              f"backbone arguments {sorted(loading.BEHAVIOUR | loading.AFTER)}")
        if "num_classes" in backbone_kwargs:  # a classifier is a Finetune's part, not a pretrainer's
            raise ConfigError(f"{cls.__name__} has no classifier, so num_classes does not apply; load the backbone "
                              f"(model='backbone', num_classes=...) or fine-tune it (mimzoo.methods.Finetune)")
        img_size = backbone_kwargs.pop("img_size", None)  # after the strict load, which needs the file's table
        if img_size is not None and "image_size" in params and "image_size" not in overrides:
            kwargs["image_size"] = img_size  # the views follow the model
        kwargs.update(overrides, backbone=None, backbone_kwargs=backbone_kwargs or None, weights=converted)
        model = cls(**kwargs)
        load_strict(model, converted.state_dict, what=str(converted.source))
        if img_size is not None:
            model.set_input_size(img_size)
        return model.eval()

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Another input size: the backbone's position table is resampled and every decoder's fixed table or RoPE
        follows the new patch grid."""
        self.backbone.set_input_size(img_size=img_size)
        grid = self.backbone.patch_embed.grid_size
        for module in self.modules():
            if hasattr(module, "set_grid") and module is not self:
                module.set_grid(grid)

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
            raise ConfigError("cannot tell the per-device batch size: give the datamodule a `batch_size` "
                              "attribute or set optim.lr explicitly")
        return batch * trainer.world_size * trainer.accumulate_grad_batches

    def learning_rate(self) -> float:
        o = self.optim
        return o.lr if o.lr is not None else o.blr * self.effective_batch_size() / 256

    def optimizer_groups(self) -> list[dict]:
        """MAE's weight-decay groups over every trainable parameter; with `optim.layer_decay`, the backbone gets
        MAE's layer-wise decay groups and the other parts the plain groups."""
        o = self.optim
        if o.layer_decay is None:
            return weight_decay_groups(self, o.weight_decay)
        groups = layer_decay_groups(self.backbone, o.weight_decay, o.layer_decay)
        for g in groups:
            g.pop("names")
        backbone = {id(p) for p in self.backbone.parameters()}
        return groups + weight_decay_groups(self, o.weight_decay, skip=backbone)

    def build_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        o = self.optim
        if o.optimizer == "lars":
            return MAELars(groups, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum,
                           trust_coefficient=o.trust_coefficient)
        return torch.optim.AdamW(groups, lr=lr, betas=o.betas, fused=self.device.type == "cuda")

    def configure_optimizers(self) -> Any:
        o = self.optim
        total = self.trainer.estimated_stepping_batches
        lr = self.learning_rate()
        groups = [g for g in self.optimizer_groups() if g["params"]]
        for g in groups:  # per-group scales (layer-wise decay) are applied once, on the base lr
            g["lr"] = lr * g.pop("lr_scale", 1.0)
        optimizer = self.build_optimizer(groups, lr)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = o.warmup_epochs * total / epochs
        if o.cosine_epochs:  # CroCo stops training half-way down a longer cosine
            total = o.cosine_epochs * total / epochs
        min_ratio = o.min_lr / lr if lr > 0 else 0.0
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total, min_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- data and steps ---------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """uint8 batches (what every mimzoo datamodule yields) become the method's views, on the device; float
        batches are taken as views already."""
        if isinstance(batch, dict) and torch.is_tensor(batch.get("image")) and batch["image"].dtype == torch.uint8:
            views = {**batch, **self.make_views(batch)}
            views.pop("image_size", None)  # the padded images' sizes: the views are all of one size
            return views
        return batch

    def make_views(self, batch: dict) -> dict:
        """The batch's entries to replace with views (training views in train mode, evaluation views in eval).
        Default: one view per image from `self.views` (MAE's, SemanticMIM's). Batches of full images of different
        sizes carry "image_size" (`ImageDataModule(crop="full")`): every view maker that crops takes `sizes=`."""
        return {"image": self.views(batch["image"], sizes=batch.get("image_size")).images}

    def training_loss(self, batch: dict):
        """An output object with `.loss` (and whatever the method reports)."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        # Lightning keeps the train/eval modes it finds, and `mimzoo.load` returns modules in eval mode: without
        # this a loaded backbone would train with drop path (and any dropout) switched off
        self.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if batch["image"].shape[0] == 0:  # every image of this batch was corrupt (already counted and reported)
            return None
        out = self.training_loss(batch)
        # not on the progress bar: that would read the loss back from the device every step
        self.log("train/loss", out.loss, batch_size=batch["image"].shape[0])
        extra = self.step_metrics(out)
        if extra:
            self.log_dict(extra, batch_size=batch["image"].shape[0])
        return out.loss

    def step_metrics(self, out) -> dict[str, torch.Tensor]:
        """Device tensors to log beside train/loss each step (read back only every log_every_n_steps)."""
        return {}

    def validation_noise(self, batch_size: int, device, batch_idx: int) -> torch.Tensor:
        """The same masks at every validation, so losses and pictures are comparable across epochs."""
        g = torch.Generator(device="cpu").manual_seed(batch_idx)
        return torch.rand(batch_size, self.backbone.num_patches, generator=g).to(device)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def mimzoo_config(self) -> dict:
        """Enough for mimzoo.load to rebuild the backbone (and the method) without the training config: the
        backbone's and every other part's configuration, the registry name and the hyper-parameters."""
        parts = {name: dict(child.part_config) for name, child in self.named_children()
                 if name != "backbone" and isinstance(getattr(child, "part_config", None), dict)}
        # LightningCLI adds `_class_path` to the hyperparameters: not a constructor argument
        evaluated = {"backbone_part": self.backbone_part} if self.backbone_part != "backbone" else {}
        known = {"provenance": self.provenance} if getattr(self, "provenance", None) else {}
        return {"backbone": dict(self.backbone._hub_mixin_config), **parts, "method": self.name, **evaluated,
                "contents": "pretrainer", **known,
                "hyper_parameters": {k: v for k, v in self.hparams.items() if not k.startswith("_")}}

    @property
    def evaluated_backbone(self) -> ViT:
        """The encoder that is evaluated and that `mimzoo.load` of this method's checkpoints gives as the backbone:
        `backbone`, unless the method keeps an average of it (MIM-Refiner's EMA)."""
        return getattr(self, self.backbone_part)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mimzoo"] = self.mimzoo_config()

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """config.json + model.safetensors (the mimzoo folder format); `mimzoo.load(dir)` gives the backbone,
        `mimzoo.load(dir, model="pretrainer")` or `Class.from_pretrained(dir)` the method; README.md is the model
        card (licence, source and reported metrics of the weights it started from)."""
        config = self.mimzoo_config()
        folder = write_folder(save_directory, config, self.state_dict())
        cards.write_folder_card(folder, config, what=f"A mimzoo {type(self).__name__} ({self.name}): the encoder "
                                f"and every other part it trains (`mimzoo.load(dir)` gives the encoder alone).",
                                usage=f"from mimzoo.methods import {type(self).__name__}\n\n"
                                      f"model = {type(self).__name__}.from_pretrained({str(folder)!r})")
        return folder

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides) -> Method:
        """This method from any file that holds it (a folder, a Lightning checkpoint, a zoo name, an upstream
        file, `hf-hub:` or a bare Hub repo id `org/repo[@revision]`, as huggingface_hub users write it), strictly
        loaded."""
        converted = loading.read(loading.as_hub_repo(name_or_path))
        held = converted.config.get("method")
        if held != cls.name and converted.config.get("class_path", "").rpartition(".")[2] != cls.__name__:
            raise ConfigError(f"{name_or_path} holds a {held!r} model, not {cls.name!r} ({cls.__name__}); "
                              f"mimzoo.load(..., model='pretrainer') rebuilds whatever it holds")
        return cls.from_converted(converted, **overrides)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
        """save_pretrained into a temporary folder and upload it as one commit; returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message="mimzoo save_pretrained"))


def _mismatch(weights: dict, own: dict) -> str:
    extra, missing = sorted(set(weights) - set(own)), sorted(set(own) - set(weights))
    shapes = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    said = [f"{len(extra)} keys only in the file" if extra else "", f"{len(missing)} only in the model" if missing
            else "", f"{len(shapes)} of other shape, e.g. {shapes[0]}" if shapes else ""]
    return ", ".join(s for s in said if s)
