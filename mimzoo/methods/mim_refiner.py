"""MIM-Refiner (Alkin et al., ICLR 2025): refine a MIM-pretrained ViT with instance-discrimination heads on its
intermediate blocks and its output, trained with Nearest Neighbour Alignment. Stage 2 trains the heads on the frozen
encoder; stage 3 trains everything, and the EMA of the encoder is the result."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..models.nna import NNAHead, NNAOutput, NNQueue
from ..optim import Optimization, ema_update_, layer_decay_groups, weight_decay_groups
from ..views import MultiCropViews
from .base import Method

__all__ = ["MIMRefiner", "MIMRefinerOutput", "NNAHead", "NNAOutput", "NNQueue", "head_name"]


@dataclass
class MIMRefinerOutput:
    loss: torch.Tensor  # the sum of the heads' NNA losses (each weight 1)
    heads: dict[str, NNAOutput]  # per head: its loss terms, projections, predictions, neighbours


def head_name(temperature: float, main: float) -> str:
    """`main` for the main temperature; `main_t0_15` for a stage-2 side head at 0.15."""
    return "main" if temperature == main else "main_t" + f"{temperature:g}".replace(".", "_")


class MIMRefiner(Method):
    """`MIMRefiner(...)(global_views, local_views, idx, nn_choice=None)` -> MIMRefinerOutput.

    One ID head (`NNAHead`) on the pooled encoder output ("main": after the final norm of a pre-norm ViT, the last
    block of a post-norm one) and one on the pooled raw output (no norm) of each block in `head_blocks`; every head
    sees all views of a step in one BatchNorm batch; the loss is the sum of the heads' NNA losses. Defaults are the
    paper's stage 3 for ViT-L/16 (recipes/mim_refiner/ has both stages for every released model).

    Args:
        backbone: architecture name or ViT config dict; None = the file's with `weights`, else vit_large_patch16.
        backbone_kwargs: ViT arguments (see `mimzoo.loading.backbone_for`).
        weights: the model to refine (any zoo name or file: MAE, data2vec 2.0, MIMIC, CroCo, SiameseIM, ...), or a
            stage-2 checkpoint, whose heads (with their queues) start every head of the same name and temperature.
        head_blocks: 0-based blocks whose raw output gets a head; None = range(depth - depth // 3, depth - 1)
            (16..22 of 24, the L/16 recipes; H/14 uses 20..30).
        temperature: of the main head and the block heads (L/16 0.2, H/14 0.3, 2B/14 0.35).
        extra_temperatures: more main heads side by side at these temperatures (stage 2, to choose one).
        pooling: "cls" (the cls token) or "avg" (the mean patch token, CrossMAE-refined).
        output_dim, proj_hidden_dim, pred_hidden_dim: the heads' sizes (256, 2048, 4096).
        queue_size: entries per head's queue (65536); topk: neighbours to draw from (stage 2: 1, stage 3: 20).
        fixed_local_indexing: False = upstream's local terms (the released models), True = the paper's.
        freeze_encoder: stage 2: the encoder stays in eval mode without gradients; only the heads train.
        frozen_blocks: stage 3: the patch embedding, cls token, position table and the first n blocks stay fixed
            (the 2B/14 recipe freezes 6).
        ema_momentum: an EMA of the encoder updated after every optimizer step, evaluated and saved as the
            backbone (`mimzoo.load` of the checkpoint gives it); None = no EMA (stage 2).
        head_weight_decay: the heads' weight decay (the encoder's is optim.weight_decay).
        image_size, local_size, num_local_views, global_scale, local_scale: the views (`MultiCropViews`): 2 global
            crops of image_size and num_local_views local crops of local_size (96 for /16 models, 98 for /14).
        optim: optimisation (stage 3: blr 4e-4, AdamW(0.9, 0.95), encoder wd 0.05 with layer-wise lr decay 0.65,
            4 warmup epochs, cosine to 1e-6; the heads at the full lr).
        compile: `torch.compile` the forward pass (True), or each transformer block ("regional": about half
            the compile time, `Method.compiled`).
    """

    name = "mim_refiner"

    def __init__(
        self,
        backbone: str | dict | None = None,
        backbone_kwargs: dict | None = None,
        weights: str | None = None,
        head_blocks: list[int] | None = None,
        temperature: float = 0.2,
        extra_temperatures: list[float] = (),
        pooling: Literal["cls", "avg"] = "cls",
        output_dim: int = 256,
        proj_hidden_dim: int = 2048,
        pred_hidden_dim: int = 4096,
        queue_size: int = 65536,
        topk: int = 20,
        fixed_local_indexing: bool = False,
        freeze_encoder: bool = False,
        frozen_blocks: int = 0,
        ema_momentum: float | None = 0.9999,
        head_weight_decay: float = 1e-5,
        image_size: int = 224,
        local_size: int = 96,
        num_local_views: int = 10,
        global_scale: tuple[float, float] = (0.25, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.25),
        optim: Optimization = Optimization(blr=4e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=4,
                                           min_lr=1e-6, layer_decay=0.65),
        compile: bool | Literal["regional"] = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        # local views are smaller: the backbone takes any size (its position table resampled as upstream does)
        vit = self.init_backbone(backbone, backbone_kwargs, weights, default="vit_large_patch16",
                                 dynamic_img_size=True)
        vit.pos_resample_antialias = False
        self.init_optim(optim)
        depth = len(vit.blocks)
        blocks = sorted({b % depth for b in (head_blocks if head_blocks is not None
                                              else range(depth - depth // 3, depth - 1))})
        self._set_hparam("head_blocks", blocks)
        if pooling not in ("cls", "avg") or (pooling == "cls" and not vit.num_prefix_tokens):
            raise ConfigError(f"pooling must be 'cls' or 'avg' (and 'avg' for a backbone without a cls token); "
                              f"got {pooling!r}")
        if freeze_encoder and ema_momentum is not None:
            raise ConfigError("freeze_encoder (stage 2) leaves the encoder as it is: set ema_momentum: null")
        if not 0 <= frozen_blocks <= depth:
            raise ConfigError(f"frozen_blocks must be between 0 and the depth {depth}; got {frozen_blocks}")
        head = dict(output_dim=output_dim, proj_hidden_dim=proj_hidden_dim, pred_hidden_dim=pred_hidden_dim,
                    queue_size=queue_size, topk=topk, fixed_local_indexing=fixed_local_indexing)
        self.head_inputs = {head_name(t, temperature): "main" for t in (temperature, *extra_temperatures)}
        self.head_inputs.update({f"block{b}": f"block{b}" for b in blocks})
        temperatures = {head_name(t, temperature): t for t in (temperature, *extra_temperatures)}
        self.heads = nn.ModuleDict({name: NNAHead(vit.embed_dim, temperature=temperatures.get(name, temperature),
                                                  **head) for name in self.head_inputs})
        if freeze_encoder:
            vit.requires_grad_(False)
        elif frozen_blocks:
            for part in (vit.patch_embed, *vit.blocks[:frozen_blocks]):
                part.requires_grad_(False)
            for p in (vit.cls_token, vit.pos_embed):
                if p is not None:
                    p.requires_grad_(False)
        self.ema = copy.deepcopy(vit).requires_grad_(False) if ema_momentum is not None else None
        self.backbone_part = "ema" if ema_momentum is not None else "backbone"
        self.views = MultiCropViews(image_size, local_size, num_local_views, tuple(global_scale),
                                    tuple(local_scale), mean=vit.data_config["mean"], std=vit.data_config["std"])
        self._step = self.compiled(self._forward, compile)
        self._load_heads()
        self.load_file_parts(derived={"ema": lambda: self.ema.load_state_dict(self.backbone.state_dict())})

    @classmethod
    def converted_kwargs(cls, config: dict) -> dict:
        if "hyper_parameters" not in config:
            raise ConfigError("the released MIM-Refiner files hold the refined encoder only (the heads were not "
                              "released): load it with model='backbone', or refine it further with "
                              "MIMRefiner(weights=...)")
        return super().converted_kwargs(config)

    # -- the method -------------------------------------------------------------------------------------------
    def pooled(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The heads' inputs for one resolution: "main" pools the encoder output, "block<k>" the raw output of
        block k (no norm)."""
        final, blocks = self.backbone.forward_intermediates(images, indices=self.hparams.head_blocks,
                                                            output_fmt="NLC", return_prefix_tokens=True)
        prefix = self.backbone.num_prefix_tokens
        if self.hparams.pooling == "cls":
            out = {"main": final[:, 0]}
            out.update({f"block{b}": cls[:, 0] for b, (_, cls) in zip(self.hparams.head_blocks, blocks)})
        else:
            out = {"main": final[:, prefix:].mean(1)}
            out.update({f"block{b}": patches.mean(1) for b, (patches, _) in zip(self.hparams.head_blocks, blocks)})
        return out

    def forward(self, global_views: torch.Tensor, local_views: torch.Tensor | None, idx: torch.Tensor,
                nn_choice: torch.Tensor | dict[str, torch.Tensor] | None = None) -> MIMRefinerOutput:
        """global_views (2B, 3, H, W) and local_views (L x B, 3, h, w), view-major; idx (B,) dataset indices;
        nn_choice: the top-k picks (2B, 1), one tensor for every head or one per head name (drawn when None)."""
        if local_views is None:
            local_views = global_views.new_zeros(0, *global_views.shape[1:])
        return self._step(global_views, local_views, idx, nn_choice)

    def _forward(self, global_views, local_views, idx, nn_choice) -> MIMRefinerOutput:
        with torch.no_grad() if self.hparams.freeze_encoder else nullcontext():
            feats = [self.pooled(global_views)] + ([self.pooled(local_views)] if len(local_views) else [])
        heads = {}
        for name, head in self.heads.items():
            x = torch.cat([f[self.head_inputs[name]] for f in feats])  # all views, one BatchNorm batch
            choice = nn_choice.get(name) if isinstance(nn_choice, dict) else nn_choice
            heads[name] = head(x, idx, num_global_views=2, nn_choice=choice)
        return MIMRefinerOutput(torch.stack([o.loss for o in heads.values()]).sum(), heads)

    # -- training ---------------------------------------------------------------------------------------------
    def make_views(self, batch: dict) -> dict:
        images = batch["image"]
        if self.training:
            crops = self.views(images, sizes=batch.get("image_size"))
        else:  # validation: training views from a fixed seed, comparable across epochs
            self.views.train()
            try:
                crops = self.views(images, seed=0, sizes=batch.get("image_size"))
            finally:
                self.views.eval()
        return {"image": crops.global_views, "local": crops.local_views}

    def _indices(self, batch: dict) -> torch.Tensor:
        idx = batch.get("index")
        if idx is None:
            raise ConfigError("MIM-Refiner needs each image's dataset index (batch['index']) to keep a sample's own "
                              "queue entries out of its neighbours; mimzoo's datamodules yield it")
        return idx.to(batch["image"].device)

    def training_loss(self, batch: dict) -> MIMRefinerOutput:
        return self(batch["image"], batch.get("local"), self._indices(batch))

    def step_metrics(self, out: MIMRefinerOutput) -> dict[str, torch.Tensor]:
        return {f"train/{name}/{k}": getattr(o, k) for name, o in out.heads.items()
                for k in ("loss", "nn_similarity")}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        idx = self._indices(batch)
        top1 = torch.zeros(2 * len(idx), 1, dtype=torch.long, device=idx.device)  # the nearest: deterministic
        out = self(batch["image"], batch.get("local"), idx, nn_choice=top1)
        self.log("val/loss", out.loss, prog_bar=True, batch_size=len(idx), sync_dist=True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_encoder:  # stage 2: the frozen encoder's dropout / drop path stay off
            self.backbone.eval()
        return self

    def optimizer_groups(self) -> list[dict]:
        """The encoder's trainable parameters with layer-wise lr decay and optim.weight_decay; the heads at the full
        lr with `head_weight_decay` (biases and 1-D tensors never decayed)."""
        o = self.optim
        groups = []
        if any(p.requires_grad for p in self.backbone.parameters()):
            if o.layer_decay is None:
                groups = weight_decay_groups(self.backbone, o.weight_decay)
            else:
                groups = layer_decay_groups(self.backbone, o.weight_decay, o.layer_decay)
                for g in groups:
                    g.pop("names")
        return groups + weight_decay_groups(self.heads, self.hparams.head_weight_decay)

    def configure_model(self) -> None:
        """Under Lightning's `ModelParallelStrategy` (FSDP2, the 2B/14 recipe: a 2B encoder, its EMA and the
        optimizer state do not fit one GPU per replica) every block of the encoder and of its EMA is a shard unit
        and the rest is sharded as one; elsewhere nothing changes."""
        mesh = self.device_mesh
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for vit in (self.backbone, self.ema):
            for blk in vit.blocks if vit is not None else ():
                fully_shard(blk, mesh=mesh)
        fully_shard(self, mesh=mesh)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            ema_update_(list(self.ema.parameters()), list(self.backbone.parameters()), self.hparams.ema_momentum)

    # -- weights ----------------------------------------------------------------------------------------------
    def _load_heads(self) -> None:
        """Heads from a stage-2 (or earlier MIM-Refiner) file: each head takes the file's head at the same input
        and temperature, with its queue; the others start from init."""
        file = self.weights_file
        if file is None or "heads" not in file.parts():
            return
        self._loaded_by_method.add("heads")
        held = file.part("heads")
        hp = file.config.get("hyper_parameters") or {}
        main = hp.get("temperature", 0.2)
        by_temperature = {t: head_name(t, main) for t in (main, *(hp.get("extra_temperatures") or ()))}
        taken, loaded = [], set()
        for name, head in self.heads.items():
            source = by_temperature.get(head.temperature) if self.head_inputs[name] == "main" else name
            weights = {k[len(source) + 1:]: v for k, v in held.items() if source and k.startswith(source + ".")}
            own = head.state_dict()
            if weights.keys() == own.keys() and all(weights[k].shape == own[k].shape for k in own):
                head.load_state_dict(weights, strict=True)
                loaded.add(name)
                taken.append(name if source == name else f"{name} (the file's {source})")
        if taken:
            self._from_file.append("heads " + ", ".join(taken))
        if len(loaded) < len(self.heads):
            self._from_init.append("heads " + ", ".join(n for n in self.heads if n not in loaded))
