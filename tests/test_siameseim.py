"""SiameseIM against upstream's `SiameseIMViT` outputs (../shared/parity/siameseim), in eval and train mode; the
momentum target; the UniGrad loss across two processes; the quick-start recipe."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mimzoo
from mimzoo.methods import SiameseIM
from mimzoo.models.losses import unigrad_loss
from mimzoo.models.pos_embed import relative_sincos
from mimzoo.views import RelativeBoxes

from conftest import assert_close, load_io
from tiny import tiny

HINTS = {"num_heads": 3, "decoder_num_heads": 4}  # the fixture's head counts, which its weights cannot show


@pytest.fixture(scope="module")
def io(parity_dir):
    return load_io(parity_dir / "siameseim")


@pytest.fixture(scope="module")
def fixture_model(parity_dir):
    return mimzoo.load(parity_dir / "siameseim" / "checkpoint.pth", model="pretrainer", **HINTS)


def rel_of(io) -> RelativeBoxes:
    return RelativeBoxes(io["delta_i"], io["delta_j"], io["delta_h"], io["delta_w"], io["relative_flip"].bool(),
                         io["flip_delta_j"])


def test_relative_position_queries_match_upstream(fixture_model, io):
    raw = relative_sincos(rel_of(io), 64, 14)
    assert_close(raw, io["relpos_embed_raw"], what="relpos_embed_raw")
    with torch.no_grad():
        assert_close(fixture_model.decoder.pos_mlp(raw), io["x2_pos_embed"], what="x2_pos_embed")


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_every_tensor_matches_upstream(fixture_model, io, mode):
    """Eval: BatchNorm running statistics; train: batch statistics over all tokens, cls included."""
    model = copy.deepcopy(fixture_model).train(mode == "train")
    suffix = "_train" if mode == "train" else ""
    with torch.no_grad():
        out = model(io["images"], io["images2"], rel_of(io), io["mask"])
    assert_close(out.pred, io[f"pred{suffix}"], what="pred")
    assert_close(out.target, io[f"target{suffix}"], what="target")
    assert_close(out.loss, io[f"loss{suffix}"].reshape(()), what="loss")
    if mode == "eval":
        assert_close(out.latent, io["online_encoder_out"], what="online encoder")
        vit = mimzoo.load(fixture_model.weights_source, num_heads=3)
        assert_close(vit.forward_features(io["images"]), io["features"], what="downstream features")
        assert_close(vit(io["images"]), io["features_pooled"], what="linear-probe input")


def test_patch_embedding_is_frozen_and_only_online_parameters_train(fixture_model):
    trainable = {n for n, p in fixture_model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("backbone.patch_embed", "momentum.", "backbone.fc_norm")) for n in trainable)
    assert "backbone.pos_embed" not in trainable and "decoder.pos_embed" not in trainable
    assert {"backbone.cls_token", "decoder.mask_token", "decoder.pos_mlp.weight"} <= trainable


def test_the_momentum_target_follows_the_online_weights(tmp_path):
    """Updated once per optimizer step, before the target pass, parameters only: a target that used the online
    weights (equal at init, so perturbed here) or skipped the update would fail."""
    model = tiny(SiameseIM)
    with torch.no_grad():
        for p in model.backbone.blocks.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    online = [p.detach().clone() for p in model.momentum.online(model.backbone, model.decoder)]
    before = [p.detach().clone() for p in model.momentum.copies()]
    stats = model.momentum.projector[0].norm1.bn.running_mean.clone()

    class Step:  # what the method reads of its trainer: at step 0 of 10 optimizer steps
        estimated_stepping_batches, global_step = 10, 0

    model._trainer = Step()
    m = model.momentum_at(0)
    assert m == pytest.approx(0.995) and model.momentum_at(10) == pytest.approx(1.0)
    assert model.momentum_at(5) == pytest.approx(1 - 0.5 * 0.005)
    batch = model.on_after_batch_transfer({"image": torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)}, 0)
    model.train()
    out = model.training_loss(batch)
    after = [p.detach().clone() for p in model.momentum.copies()]
    for t0, o, t1 in zip(before, online, after):
        assert torch.allclose(t1, m * t0 + (1 - m) * o, atol=1e-7)
    assert not torch.equal(model.momentum.projector[0].norm1.bn.running_mean, stats)  # its own batch statistics
    with torch.no_grad():
        assert torch.equal(out.target, model.momentum(batch["image2"], model.backbone.pos_embed))
        wrong = copy.deepcopy(model.momentum)
        wrong.copy_from(model.backbone, model.decoder)
        assert not torch.allclose(wrong(batch["image2"], model.backbone.pos_embed), out.target, atol=1e-3)
    model.training_loss(batch)  # the same optimizer step: no second update
    assert all(torch.equal(a, b) for a, b in zip(after, model.momentum.copies()))


def test_a_file_without_a_momentum_target_starts_it_from_the_online_weights(parity_dir, caplog):
    mimzoo_logger = __import__("logging").getLogger("mimzoo")
    mimzoo_logger.propagate = True
    with caplog.at_level("INFO", logger="mimzoo"):
        model = SiameseIM(weights=str(parity_dir / "mae_pretrain/checkpoint_released_encoder.pth"),
                          decoder_embed_dim=64, projector_depth=1, predictor_depth=1, decoder_num_heads=4)
    assert "momentum copied from the online weights" in caplog.text
    for t, o in zip(model.momentum.copies(), model.momentum.online(model.backbone, model.decoder)):
        assert torch.equal(t, o)


def _unigrad_rank(rank, world, port, pred, target, fixture, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = pred.shape[0] // world
        mine = slice(rank * half, (rank + 1) * half)
        loss = unigrad_loss(pred[mine], target[mine])
        dist.all_reduce(loss)  # what DDP's gradient averaging amounts to: the mean of the ranks' losses
        out[0, rank] = loss / world
        # the whole model, one fixture sample per rank (eval mode: CPU has no SyncBatchNorm, see docs/siameseim.md)
        io = load_io(fixture.parent)
        model = mimzoo.load(fixture, model="pretrainer", **HINTS).eval()
        with torch.no_grad():
            loss = model(io["images"][rank:rank + 1], io["images2"][rank:rank + 1],
                         RelativeBoxes(*(t[rank:rank + 1] for t in rel_of(io))), io["mask"][rank:rank + 1]).loss
        dist.all_reduce(loss)
        out[1, rank] = loss / world
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_unigrad_on_two_processes_equals_one_process_on_the_union_batch(parity_dir):
    import socket

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 49, 32, generator=g), torch.randn(4, 49, 32, generator=g) * 2 + 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = torch.zeros(2, 2).share_memory_()
    fixture = parity_dir / "siameseim" / "checkpoint.pth"
    mp.spawn(_unigrad_rank, args=(2, port, pred, target, fixture, out), nprocs=2, join=True)
    union = unigrad_loss(pred, target)
    assert torch.allclose(out[0], union.expand(2), atol=1e-6), (out, union)
    # upstream's loss on both samples in one process (its own all-reduce over a world of one)
    assert torch.allclose(out[1], load_io(fixture.parent)["loss"].expand(2), atol=1e-5), out
    alone = (unigrad_loss(pred[:2], target[:2]) + unigrad_loss(pred[2:], target[2:])) / 2
    assert not torch.allclose(alone, union, atol=1e-4)  # without the all-reduce the push term differs


def _beit_reference(rng, grid=14, num_masked=118, min_patches=16, min_aspect=0.3):
    """BEiT's block mask written plainly for one sample (the test's reference for the batched draw)."""
    import math

    import numpy as np

    mask = np.zeros((grid, grid), bool)
    count = 0
    while count < num_masked:
        remaining, added = num_masked - count, 0
        for _ in range(10):
            area = min_patches + (remaining - min_patches) * rng.random()  # Python's uniform(a, b), a > b too
            aspect = math.exp(rng.uniform(math.log(min_aspect), math.log(1 / min_aspect)))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h < grid and w < grid:
                top, left = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
                new = h * w - mask[top:top + h, left:left + w].sum()
                if 0 < new <= remaining:
                    mask[top:top + h, left:left + w] = True
                    added = new
                    break
        if not added:
            break
        count += added
    free = np.flatnonzero(~mask.ravel())
    mask.ravel()[rng.permutation(free)[:num_masked - count]] = True
    return mask


def _components(mask) -> int:
    from scipy import ndimage

    return ndimage.label(mask)[1]


def test_block_mask_is_beits_distribution_with_the_exact_count():
    import numpy as np

    from mimzoo.models.masking import block_mask

    g = torch.Generator().manual_seed(0)
    ours = block_mask(1500, (14, 14), 118, generator=g)
    assert (ours.sum(1) == 118).all()
    assert torch.equal(block_mask(8, (14, 14), 118, generator=torch.Generator().manual_seed(5)),
                       block_mask(8, (14, 14), 118, generator=torch.Generator().manual_seed(5)))
    assert (block_mask(3, (4, 4), 0).sum(1) == 0).all() and block_mask(3, (4, 4), 16).all()
    rng = np.random.default_rng(0)
    reference = np.stack([_beit_reference(rng) for _ in range(1500)])
    ours = ours.view(-1, 14, 14).numpy()
    comp_ours = np.mean([_components(m) for m in ours])
    comp_ref = np.mean([_components(m) for m in reference])
    assert abs(comp_ours - comp_ref) < 0.15 * comp_ref, (comp_ours, comp_ref)  # random masking: ~10x more
    freq_ours, freq_ref = ours.mean(0), reference.mean(0)  # BEiT masks the centre more than the border
    assert np.abs(freq_ours - freq_ref).max() < 0.08, np.abs(freq_ours - freq_ref).max()
    assert freq_ours[5:9, 5:9].mean() > freq_ours[0].mean() + 0.1


def test_the_geometry_picture_puts_each_dot_on_the_same_content():
    """On an image whose colour encodes the position, each view-2 patch centre and the point the geometry maps it to
    in view 1 show the same colour, flipped views included."""
    from mimzoo.models.pos_embed import view2_centres_in_view1
    from mimzoo.views import TwoCropViews

    H, W = 120, 160
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    image = (torch.stack([x, y, 0.5 * torch.ones_like(x)]) * 255).round().byte()
    maker = TwoCropViews(size=64, color=False, scale=(0.3, 1.0))
    views = maker(image[None].repeat(16, 1, 1, 1), seed=1)
    assert views.flipped1.any() and not views.flipped1.all()
    rows, cols = view2_centres_in_view1(views.relative_boxes(), 8)
    mean, std = torch.tensor(maker.mean).view(3, 1, 1), torch.tensor(maker.std).view(3, 1, 1)
    seen = 0
    for b in range(16):
        v1, v2 = views.images1[b] * std + mean, views.images2[b] * std + mean
        for k in range(64):
            r, c = divmod(k, 8)
            py, px = (rows[b, k] + 0.5) * 8, (cols[b, k] + 0.5) * 8
            if 2 <= py < 62 and 2 <= px < 62:
                here = v1[:2, int(py), int(px)]
                there = v2[:2, r * 8 + 4, c * 8 + 4]
                assert torch.allclose(here, there, atol=0.03), (b, k, here, there)
                seen += 1
    assert seen > 100


@pytest.mark.slow
def test_the_training_forward_traces_as_one_graph():
    """What `compile=True` compiles: one graph, no graph break (no host sync, no data-dependent Python)."""
    model = tiny(SiameseIM).train()
    batch = model.on_after_batch_transfer({"image": torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)}, 0)
    explained = torch._dynamo.explain(model._forward)(batch["image"], batch["image2"], RelativeBoxes(*batch["rel"]),
                                                       batch["mask"])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
