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
