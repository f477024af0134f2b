"""MIM-Refiner's ID head against upstream's NnclrHead + NnclrQueue + NnclrLoss outputs (../shared/parity/mim_refiner/
nna_head): every tensor within 1e-5, integers exactly."""
from pathlib import Path

import pytest
import torch

from mimzoo.methods.mim_refiner import NNAHead

FIXTURE = Path(__file__).resolve().parents[2] / "shared/parity/mim_refiner/nna_head"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="needs ../shared/parity")


def _head_and_tensors(**kwargs):
    from safetensors.torch import load_file

    head = NNAHead(192, 32, proj_hidden_dim=64, pred_hidden_dim=128, queue_size=64, topk=5, temperature=0.2, **kwargs)
    head.load_state_dict(torch.load(FIXTURE / "checkpoint.pth", weights_only=True)["state_dict"], strict=True)
    return head.train(), load_file(FIXTURE / "io.safetensors")


def test_the_nna_head_reproduces_upstream():
    head, t = _head_and_tensors()
    out = head(t["x"], t["idx"], num_global_views=2, nn_choice=t["nn_choice"])
    close = lambda a, b: torch.testing.assert_close(a.reshape(b.shape), b, atol=1e-5, rtol=0)  # noqa: E731
    close(out.projected, t["projected_all"])
    close(out.predicted, t["predicted"])
    close(out.neighbours, t["projected_postswap"])
    assert torch.equal(out.slots, t["nn_qidx"])
    for mine, theirs in [(out.loss, "loss.total"), (out.global_loss, "loss.global_loss"),
                         (out.local_loss, "loss.local_loss"), (out.global_alignment, "info.global_alignment"),
                         (out.local_alignment, "info.local_alignment"), (out.nn_similarity, "metric.nn_similarity")]:
        close(mine, t[theirs])
    close(head.queue.x, t["queue_after.x"])
    for k in ("idx", "ptr", "age"):  # the enqueue wraps around the end of the queue
        assert torch.equal(getattr(head.queue, k), t[f"queue_after.{k}"]), k
    state = head.state_dict()
    for k in (k for k in t if k.startswith("bn_after.")):
        close(state[k[len("bn_after."):]], t[k])


def test_fixed_local_indexing_and_eval_mode():
    head, t = _head_and_tensors(fixed_local_indexing=True)
    out = head(t["x"], t["idx"], nn_choice=t["nn_choice"])
    torch.testing.assert_close(out.loss.reshape(1), t["own.loss_total_local_views_indexed_correctly"], atol=1e-5,
                               rtol=0)
    head.eval()
    queue = head.queue.x.clone()
    drawn = head(t["x"], t["idx"])  # nn_choice drawn inside, nothing enqueued outside training
    assert drawn.nn_choice.shape == (16, 1) and int(drawn.nn_choice.max()) < 5
    assert torch.equal(head.queue.x, queue)


def _split(t, rank: int, world: int, views: int):
    """Rank `rank`'s share of a view-major (views x B, ...) tensor: its slice of every view."""
    per_view = t.view(views, -1, *t.shape[1:])
    half = per_view.shape[1] // world
    return per_view[:, rank * half:(rank + 1) * half].reshape(-1, *t.shape[1:])


def _run_head(x, idx, choice):
    """One NNA step with BatchNorm in eval mode (fixed statistics, the same on every process); returns the loss,
    the gradients and the queue after."""
    head, _ = _head_and_tensors()
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.eval()
    out = head(x, idx, nn_choice=choice)
    out.loss.backward()
    grads = [p.grad.clone() for p in head.parameters()]
    return out.loss.detach(), grads, {k: v.clone() for k, v in head.queue.state_dict().items()}


def _nna_rank(rank, world, port, result):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _, t = _head_and_tensors()
        loss, grads, queue = _run_head(_split(t["x"], rank, world, 6), _split(t["idx"], rank, world, 1),
                                       _split(t["nn_choice"], rank, world, 2))
        dist.all_reduce(loss)  # DDP averages the ranks' gradients: the objective is the mean of their losses
        for g in grads:
            dist.all_reduce(g)
        torch.save({"loss": loss / world, "grads": [g / world for g in grads], "queue": queue},
                   f"{result}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_nna_on_two_processes_equals_one_process_on_the_union_batch(tmp_path):
    """Gathered predictions (negatives over the global batch, labels offset by rank) and the gathered enqueue
    make two processes of 4 samples equal one process of 8: loss, every gradient, the queue on both ranks. Upstream
    is equal only with the same BatchNorm statistics on every process (eval mode here; in training each GPU
    normalises its own batch, upstream and here)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_nna_rank, args=(2, port, str(tmp_path / "rank")), nprocs=2, join=True)
    _, t = _head_and_tensors()
    loss, grads, queue = _run_head(t["x"], t["idx"], t["nn_choice"])
    for rank in range(2):
        got = torch.load(tmp_path / f"rank.{rank}", weights_only=True)
        torch.testing.assert_close(got["loss"], loss, atol=1e-6, rtol=0)
        for a, b in zip(got["grads"], grads):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        for k in queue:
            assert torch.equal(got["queue"][k], queue[k]), k
    alone, _, _ = _run_head(_split(t["x"], 0, 2, 6), _split(t["idx"], 0, 2, 1), _split(t["nn_choice"], 0, 2, 2))
    assert not torch.allclose(alone, loss, atol=1e-3)  # without the gather the negatives would differ


FSDP_SCRIPT = '''
import json, sys
import lightning as L, torch
from lightning.pytorch.strategies import ModelParallelStrategy
from mimzoo.methods import MIMRefiner

world, out = int(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(0)
views = {"image": torch.randn(8, 3, 32, 32, generator=g), "local": torch.randn(8, 3, 16, 16, generator=g),
         "index": torch.arange(4)}
if world == 1:  # the union of the two processes' batches (each process sees the same 4 samples)
    views = {k: torch.cat([v.view(-1, 4, *v.shape[1:])] * 2, 1).flatten(0, 1) for k, v in views.items()}

class Losses(L.Callback):
    seen = []
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(float(outputs["loss"]))

torch.manual_seed(0)
model = MIMRefiner(backbone="vit_tiny_patch8", backbone_kwargs={"depth": 2, "img_size": 32}, head_blocks=[0],
                   output_dim=16, proj_hidden_dim=32, pred_hidden_dim=32, queue_size=32, topk=1, image_size=32,
                   local_size=16, num_local_views=2, ema_momentum=0.9, optim={"warmup_epochs": 0, "lr": 1e-4})
strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if world == 2 else "auto"
trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=2, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    callbacks=[Losses()], limit_val_batches=0, use_distributed_sampler=False)
trainer.fit(model, torch.utils.data.DataLoader([views] * 2, batch_size=None))
if trainer.global_rank == 0:
    json.dump(Losses.seen, open(out, "w"))
'''


@pytest.mark.slow
def test_fsdp_on_two_processes_equals_one_process_on_the_union_batch(tmp_path):
    """The 2B/14 recipe's strategy (Lightning's ModelParallelStrategy: FSDP2, every block a shard unit) on two CPU
    processes gives the loss of one process on the union batch, before and after an optimizer step (its gradients
    reduced across the shards; AdamW's first step is nearly a sign step, which turns float rounding into ~1e-5).
    Each process gets the same 4 samples, so its BatchNorm statistics are those of the union: with different
    samples per process they differ, per GPU, as upstream's."""
    import json
    import subprocess
    import sys

    script = tmp_path / "fsdp.py"
    script.write_text(FSDP_SCRIPT)
    losses = {}
    for world in (1, 2):
        run = subprocess.run([sys.executable, str(script), str(world), str(tmp_path / f"{world}.json")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        losses[world] = json.loads((tmp_path / f"{world}.json").read_text())
    assert len(losses[1]) == 2 and losses[1][1] < losses[1][0] - 0.1  # the step trained
    assert abs(losses[2][0] - losses[1][0]) < 1e-5 and abs(losses[2][1] - losses[1][1]) < 1e-4, losses
