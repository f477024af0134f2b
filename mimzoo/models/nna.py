"""MIM-Refiner's instance-discrimination head (Alkin et al., ICLR 2025): a projector + predictor with BatchNorm and
a FIFO nearest-neighbour queue, trained with Nearest Neighbour Alignment (NNA: NNCLR's loss with only the positive
swapped for its neighbour). Module and buffer names are upstream's (`NnclrHead`, `NnclrQueue`), so an upstream head
checkpoint's `state_dict` loads strictly.

Distributed (as upstream): the predictions are all-gathered with gradient, so every process's anchors see the whole
global batch as negatives (labels offset by the rank); the queue enqueues the gathered view-0 rows, so every
process holds the same queue. BatchNorm statistics stay per process (upstream has no SyncBN)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered rows and keeps this process's share
    (an all-reduce, supported by every backend; torch.distributed.nn's all-to-all is not reliable on gloo)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def gather(x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Rows of every process, concatenated in rank order; with `grad`, gradients flow back to each process's rows
    (summed over the processes that used them)."""
    if _world()[1] == 1:
        return x
    if grad:
        return _GatherWithGrad.apply(x.contiguous())
    parts = [torch.empty_like(x) for _ in range(_world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _mlp_layer(dim_in: int, dim_out: int, act: bool) -> nn.Sequential:
    # BatchNorm after every linear, so the linears have no bias (upstream norm_mode="batchnorm")
    layers = [nn.Linear(dim_in, dim_out, bias=False), nn.BatchNorm1d(dim_out)]
    return nn.Sequential(*layers, nn.GELU()) if act else nn.Sequential(*layers)


class NNQueue(nn.Module):
    """FIFO queue of teacher projections with the dataset index of each (to exclude a sample's own entries)."""

    def __init__(self, size: int, dim: int, topk: int = 1):
        super().__init__()
        self.topk = topk
        self.register_buffer("x", torch.randn(size, dim))
        self.register_buffer("idx", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("cls", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("age", torch.zeros(size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, z: torch.Tensor, idx: torch.Tensor, nn_choice: torch.Tensor | None = None):
        """One of the top-k neighbours of each row of z (cosine), uniformly; entries of the row's own sample are
        skipped in training. Returns (neighbours, slots, nn_choice)."""
        sim = F.normalize(z, dim=-1) @ F.normalize(self.x, dim=-1).T
        if self.training:
            sim = sim.masked_fill(self.idx[None, :] == idx[:, None], -1.0)
        top = sim.topk(self.topk, dim=-1).indices
        if nn_choice is None:
            nn_choice = torch.randint(self.topk, (len(z), 1), device=z.device)
        slots = top.gather(1, nn_choice).squeeze(1)
        return self.x[slots].clone(), slots, nn_choice

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """FIFO: every process's rows (in rank order) replace the oldest entries."""
        z, idx = gather(z), gather(idx)
        n, size = len(z), len(self.x)
        slots = (self.ptr + torch.arange(n, device=z.device)) % size  # wraps around the end, no host sync
        self.x[slots] = z
        self.idx[slots] = idx
        self.age[slots] = 0
        self.age += n
        self.ptr.copy_((self.ptr + n) % size)


@dataclass
class NNAOutput:
    loss: torch.Tensor
    global_loss: torch.Tensor
    local_loss: torch.Tensor
    projected: torch.Tensor  # (V x B, D) projector output of every view
    predicted: torch.Tensor  # (V x B, D)
    nn_choice: torch.Tensor  # (G x B, 1) the top-k pick
    neighbours: torch.Tensor  # (G x B, D) raw queue entries swapped in as positives
    slots: torch.Tensor  # (G x B,) their queue slots
    global_alignment: torch.Tensor
    local_alignment: torch.Tensor
    nn_similarity: torch.Tensor


class NNAHead(nn.Module):
    """ID head on pooled features. Args:
        input_dim: the pooled feature's size.
        output_dim: projection size (256 in the paper).
        proj_hidden_dim, pred_hidden_dim: hidden sizes (2048, 4096).
        queue_size: queue entries (65536); topk: neighbours to pick from (1 in stage 2, 20 in stage 3).
        temperature: of the contrastive softmax (0.2).
        fixed_local_indexing: False (default) reproduces upstream, whose local terms pair the global anchors with
            `predicted[:, jj]` (the two global views and the first n_local - 2 local views, never the last two);
            True pairs them with local view jj, as the paper describes."""

    def __init__(self, input_dim: int, output_dim: int = 256, proj_hidden_dim: int = 2048,
                 pred_hidden_dim: int = 4096, queue_size: int = 65536, topk: int = 1, temperature: float = 0.2,
                 fixed_local_indexing: bool = False):
        super().__init__()
        self.temperature, self.fixed_local_indexing = temperature, fixed_local_indexing
        self.projector = nn.Sequential(_mlp_layer(input_dim, proj_hidden_dim, True),
                                       _mlp_layer(proj_hidden_dim, proj_hidden_dim, True),
                                       _mlp_layer(proj_hidden_dim, output_dim, False))
        self.predictor = nn.Sequential(_mlp_layer(output_dim, pred_hidden_dim, True),
                                       _mlp_layer(pred_hidden_dim, output_dim, False))
        self.queue = NNQueue(queue_size, output_dim, topk)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, num_global_views: int = 2,
                nn_choice: torch.Tensor | None = None) -> NNAOutput:
        b, g = len(idx), num_global_views
        views = len(x) // b
        p = self.projector(x)
        q = self.predictor(p)
        z = p.detach()[: g * b]  # teacher: the global views, no momentum encoder
        own = idx.repeat(g)
        neighbours, slots, nn_choice = self.queue.nearest(z, own, nn_choice)
        if self.training:
            self.queue.enqueue(z[:b], idx)  # view 0 only, as upstream
        zn, nnn = F.normalize(z, dim=-1).view(g, b, -1), F.normalize(neighbours, dim=-1).view(g, b, -1)
        rank, world = _world()
        # (views, world x b, D): each view's predictions of the whole global batch, rank-major
        qn = gather(F.normalize(q, dim=-1).view(views, b, -1).transpose(0, 1), grad=True).transpose(0, 1)
        labels = torch.arange(b, device=q.device) + rank * b
        pairs_global = [(i, j) for i in range(g) for j in range(g) if i != j]
        first = g if self.fixed_local_indexing else 0
        pairs_local = [(i, first + jj) for i in range(g) for jj in range(views - g)]
        glob = [self._term(zn[i], nnn[i], qn[j], labels) for i, j in pairs_global]
        loc = [self._term(zn[i], nnn[i], qn[j], labels) for i, j in pairs_local]
        terms = glob + loc
        mean = lambda ts, k: torch.stack([t[k] for t in ts]).mean() if ts else z.new_zeros(())  # noqa: E731
        total = torch.stack([t[0] for t in terms]).sum() / len(terms)
        return NNAOutput(total, mean(glob, 0), mean(loc, 0), p, q, nn_choice, neighbours, slots, mean(glob, 1),
                         mean(loc, 1), F.cosine_similarity(z, neighbours, dim=-1).mean())

    def _term(self, anchor, neighbour, pred, labels):
        """CE over the global batch's predictions with the anchor's neighbour as the positive (negatives
        un-swapped): anchor a's positive is prediction `labels[a]`."""
        logits = anchor @ pred.T / self.temperature
        positive = (neighbour * pred[labels]).sum(-1, keepdim=True) / self.temperature
        logits = logits.scatter(1, labels[:, None], positive)
        return F.cross_entropy(logits, labels), logits.softmax(-1).gather(1, labels[:, None]).mean()
