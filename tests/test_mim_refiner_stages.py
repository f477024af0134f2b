"""MIM-Refiner's two stages on a tiny ViT: stage 2 trains the heads only (the encoder frozen and in eval mode),
stage 3 starts every head (weights and queue) from its stage-2 head of the same input and temperature, keeps the
first blocks fixed when asked, decays the encoder's lr layer by layer and saves its EMA; the multi-crop views."""
from pathlib import Path

import lightning as L
import pytest
import torch

import mimzoo
from mimzoo.errors import ConfigError
from mimzoo.views import MultiCropViews

from tiny import TINY_VIT, tiny

SMALL = dict(head_blocks=[0], output_dim=16, proj_hidden_dim=32, pred_hidden_dim=32, queue_size=32, topk=2,
             image_size=32, local_size=16, num_local_views=2)


def _fit(model, steps: int, root):
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g), "index": torch.tensor(i)}
             for i in range(8)]
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, num_sanity_val_steps=0,
                        limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(model, torch.utils.data.DataLoader(items, batch_size=4, shuffle=True))
    return trainer


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_trains_the_heads_only_and_stage3_starts_from_them(tmp_path):
    stage2 = tiny("mim_refiner", **{**SMALL, "topk": 1}, freeze_encoder=True, ema_momentum=None, temperature=0.2,
                  extra_temperatures=[0.1])
    assert set(stage2.heads) == {"main", "main_t0_1", "block0"}
    encoder, heads = _state(stage2.backbone), _state(stage2.heads)
    trainer = _fit(stage2, 3, tmp_path)
    assert not stage2.backbone.training and all(not m.training for m in stage2.backbone.modules())
    assert all(torch.equal(v, encoder[k]) for k, v in stage2.backbone.state_dict().items()), "the encoder moved"
    after = stage2.heads.state_dict()
    assert not torch.equal(after["main.projector.0.0.weight"], heads["main.projector.0.0.weight"])
    assert int(after["main.queue.ptr"]) == 3 * 4 % 32 and int(after["main.queue.age"].sum()) > 0  # view 0 enqueued
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")

    # stage 3 at temperature 0.1: its main head is stage 2's side head at 0.1, queue included
    stage3 = tiny("mim_refiner", weights=str(tmp_path / "stage2.ckpt"), backbone="vit_tiny_patch16",
                  backbone_kwargs=TINY_VIT, **{**SMALL, "topk": 3}, temperature=0.1, frozen_blocks=1, ema_momentum=0.5)
    held = stage2.heads.state_dict()
    for name, source in (("main", "main_t0_1"), ("block0", "block0")):
        for k, v in stage3.heads[name].state_dict().items():
            assert torch.equal(v, held[f"{source}.{k}"]), (name, k)
    assert stage3.heads["main"].temperature == 0.1 and stage3.heads["main"].queue.topk == 3
    assert all(torch.equal(v, encoder[k]) for k, v in stage3.backbone.state_dict().items())
    assert all(torch.equal(v, encoder[k]) for k, v in stage3.ema.state_dict().items())

    fixed = {k: v for k, v in _state(stage3.backbone).items()
             if k.startswith(("patch_embed.", "blocks.0.", "cls_token", "pos_embed"))}
    moving = _state(stage3.backbone)["blocks.1.attn.qkv.weight"]
    trainer = _fit(stage3, 2, tmp_path)
    now = stage3.backbone.state_dict()
    assert all(torch.equal(now[k], v) for k, v in fixed.items()), "a frozen block moved"
    assert not torch.equal(now["blocks.1.attn.qkv.weight"], moving)
    ema = stage3.ema.state_dict()
    # EMA at 0.5 after two steps: between the start and the online encoder, equal to neither
    assert not torch.equal(ema["blocks.1.attn.qkv.weight"], now["blocks.1.attn.qkv.weight"])
    assert not torch.equal(ema["blocks.1.attn.qkv.weight"], moving)
    trainer.save_checkpoint(tmp_path / "stage3.ckpt")
    loaded = mimzoo.load(tmp_path / "stage3.ckpt").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.items() if k in loaded)
    assert {k for k in loaded if "fc_norm" not in k and "head" not in k} <= set(ema)


def test_layerwise_lr_decay_is_upstreams():
    """Stem 0.65^(depth+1), block k 0.65^(depth-k), final norm 1; the heads at the full lr with weight decay 1e-5;
    frozen parameters in no group."""
    model = tiny("mim_refiner", **SMALL, frozen_blocks=1)
    depth = len(model.backbone.blocks)
    scale = {}
    for group in model.optimizer_groups():
        for p in group["params"]:
            scale[id(p)] = (group.get("lr_scale", 1.0), group["weight_decay"])
    named = dict(model.named_parameters())
    assert scale[id(named["backbone.blocks.1.attn.qkv.weight"])] == pytest.approx((0.65 ** (depth - 1), 0.05))
    assert scale[id(named["backbone.norm.weight"])] == (1.0, 0.0)
    assert scale[id(named["heads.main.projector.0.0.weight"])] == (1.0, 1e-5)
    assert scale[id(named["heads.main.projector.0.1.bias"])] == (1.0, 0.0)
    assert id(named["backbone.blocks.0.attn.qkv.weight"]) not in scale  # frozen
    assert id(named["backbone.patch_embed.proj.weight"]) not in scale
    unfrozen = tiny("mim_refiner", **SMALL)
    groups = unfrozen.optimizer_groups()
    stem = [g for g in groups if any(p is unfrozen.backbone.patch_embed.proj.weight for p in g["params"])][0]
    assert stem["lr_scale"] == pytest.approx(0.65 ** (depth + 1))


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="ema_momentum: null"):
        tiny("mim_refiner", **SMALL, freeze_encoder=True)
    with pytest.raises(ConfigError, match="frozen_blocks"):
        tiny("mim_refiner", **SMALL, frozen_blocks=5)
    model = tiny("mim_refiner", **SMALL)
    with pytest.raises(ConfigError, match="dataset index"):
        model.training_loss({"image": torch.zeros(4, 3, 32, 32)})


def test_multicrop_views_sizes_scales_and_seeds():
    views = MultiCropViews(32, 16, num_local=3, scale=(0.25, 1.0), local_scale=(0.05, 0.25), mean=(0.5,) * 3,
                           std=(0.5,) * 3).train()
    images = torch.randint(0, 256, (64, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crops = views(images, seed=1)
    assert crops.global_views.shape == (128, 3, 32, 32) and crops.local_views.shape == (192, 3, 16, 16)
    again = views(images, seed=1)
    assert torch.equal(crops.global_views, again.global_views) and torch.equal(crops.local_views, again.local_views)
    assert not torch.equal(views(images, seed=2).local_views, crops.local_views)
    from mimzoo.resized_crops import rrc_boxes

    assert (views.scale, views.local_scale) == ((0.25, 1.0), (0.05, 0.25))
    for scale, (lo, hi) in ((views.scale, (0.25, 1.0)), (views.local_scale, (0.05, 0.25))):
        box = rrc_boxes(torch.tensor([[40, 40]]).expand(64, 2), scale, views.ratio)  # the views' own sampler
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / 40 ** 2
        assert area.min() >= lo - 0.02 and area.max() <= hi + 0.02, (area.min(), area.max())
        assert area.max() - area.min() > (hi - lo) / 3  # spread over the range, not one size
    views.eval()
    centre = views(images)
    assert torch.equal(centre.global_views[:64], centre.global_views[64:])  # eval: one centre view, no colour


def test_quickstart_refine_recipe_runs_on_a_quickstart_mae_and_its_result_probes(tmp_path, monkeypatch, capsys):
    """recipes/quickstart/refine_tiny.yaml from the CLI (five one-step epochs) on an MAE shaped like the quick
    start's; the k-NN the monitor logged for the EMA encoder is what `mimzoo probe knn` measures on the saved file."""
    import csv
    import json

    from mimzoo.cli import main as cli
    from mimzoo.methods import MAE

    torch.manual_seed(0)
    mae = MAE(backbone="vit_tiny_patch8", backbone_kwargs={"depth": 4, "img_size": 64}, decoder_embed_dim=32,
              decoder_depth=1, decoder_num_heads=2, image_size=64, optim={"warmup_epochs": 0})
    out = tmp_path / "runs" / "quickstart" / "checkpoints"
    _fit(mae, 1, tmp_path).save_checkpoint(out / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "refine_tiny.yaml"
    assert cli(["fit", "-c", str(recipe), "--trainer.max_epochs=5", "--trainer.limit_train_batches=1",
                "--trainer.enable_progress_bar=false", "--data.init_args.repeats=1", "--data.init_args.batch_size=8",
                "--data.init_args.num_workers=0", "--model.init_args.num_local_views=2"]) in (0, None)
    run = tmp_path / "runs" / "refine_quickstart"
    logged = [float(r["knn/top1"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("knn/top1")]
    assert len(logged) == 1  # after epoch 5 (every fifth epoch)
    capsys.readouterr()
    assert cli(["probe", "knn", "--model", str(run / "checkpoints" / "last.ckpt"), "--data", "digits",
                "--pooling", "cls_prenorm", "--standardize", "--k", "10", "--temperature", "0.07", "--quiet"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["knn10_top1"] == pytest.approx(logged[0], abs=0.01), (probed, logged)
    assert probed["knn10_top1"] > 20  # digits separate well above chance (10 %) even after two steps


@pytest.mark.slow
def test_the_training_forward_traces_as_one_graph():
    """What `compile=True` compiles: 12 views, every head, the NN lookup and the enqueue in one graph."""
    model = tiny("mim_refiner").train()
    batch = model.on_after_batch_transfer({"image": torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8),
                                           "index": torch.arange(4)}, 0)
    explained = torch._dynamo.explain(model._forward)(batch["image"], batch["local"], batch["index"], None)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
