"""The method contract, for every registered method (`mimzoo.methods.METHODS`): built from an architecture; started
from an upstream fixture with `weights=` it reproduces the output the upstream code stored; one CPU training step
trains it; `save_pretrained` -> `from_pretrained` and its Lightning checkpoint (through `mimzoo.load`, as backbone
and as pretrainer) give back the same model; a recipe trains it. A new method is covered by one `SPECS` entry
(and one `tests/tiny.py` entry); a registered method without one fails `test_every_method_has_a_spec`."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import mimzoo
from mimzoo.errors import ConfigError
from mimzoo.methods import METHODS

from conftest import assert_close, load_io
from tiny import tiny

ROOT = Path(__file__).resolve().parents[1]


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def noise(model, n: int) -> torch.Tensor:
    return torch.rand(n, model.backbone.num_patches, generator=torch.Generator().manual_seed(1))


@dataclass
class Spec:
    """How the contract exercises one method."""
    fixture: str  # checkpoint under ../shared/parity
    kwargs: dict  # constructor arguments besides weights when starting from the fixture
    reproduce: Callable  # (model, io) -> (ours, upstream's stored tensor)
    batch: Callable  # n -> a uint8 batch as the method's datamodule yields it
    output: Callable  # (model, views batch) -> a deterministic output (eval mode)


def _rel(io):
    from mimzoo.views import RelativeBoxes

    return RelativeBoxes(*(io[k] for k in ("delta_i", "delta_j", "delta_h", "delta_w")), io["relative_flip"].bool(),
                         io["flip_delta_j"])


def _pair_batch(n):
    return {"image": images(n, 40, 0), "image2": images(n, 40, 1)}


SPECS = {
    "mae": Spec("mae_pretrain/checkpoint.pth", {},
                lambda m, io: (m(io["images"], noise=io["noise"]).loss, io["loss"]),
                lambda n: {"image": images(n, 40)},
                lambda m, b: m(b["image"], noise(m, len(b["image"]))).pred),
    "croco": Spec("croco_v2/checkpoint.pth", {},
                  lambda m, io: (m(io["images"], io["images2"], noise=io["noise"]).loss, io["loss"]),
                  _pair_batch,
                  lambda m, b: m(b["image"], b["image2"], noise(m, len(b["image"]))).pred),
    "mimic": Spec("mae_pretrain/mimic_multiview/checkpoint.pth", {},
                  lambda m, io: (m(io["images"], io["images2"], noise=io["noise"]).loss, io["loss"]),
                  _pair_batch,
                  lambda m, b: m(b["image"], b["image2"], noise(m, len(b["image"]))).pred),
    "siameseim": Spec("siameseim/checkpoint.pth", {"backbone_kwargs": {"num_heads": 3}, "decoder_num_heads": 4},
                      lambda m, io: (m(io["images"], io["images2"], _rel(io), io["mask"]).loss, io["loss"].reshape(())),
                      lambda n: {"image": images(n, 40)},
                      lambda m, b: m(b["image"], b["image2"], b["rel"], b["mask"]).pred),
    # the heads' inputs: the pooled encoder output and each head block's raw cls token, as upstream's encoder gives
    "mim_refiner": Spec("mim_refiner/checkpoint.pth", {"head_blocks": [0, 1], "output_dim": 16, "proj_hidden_dim": 32,
                                                       "pred_hidden_dim": 32, "queue_size": 32},
                        lambda m, io: (torch.stack(list(m.pooled(io["images"]).values())),
                                       torch.stack([io["cls"], *(io[f"block_outputs.{i}"][:, 0] for i in (0, 1))])),
                        lambda n: {"image": images(n, 40), "index": torch.arange(n)},
                        lambda m, b: m(b["image"], b["local"], b["index"],
                                       torch.zeros(2 * len(b["index"]), 1, dtype=torch.long)).heads["main"].predicted),
    "semanticmim": Spec("semanticmim/maskfeat/checkpoint.pth", {},
                        lambda m, io: (m(io["images"], io["mask"]).loss, io["loss"]),
                        lambda n: {"image": images(n, 40)},
                        lambda m, b: m(b["image"], torch.arange(m.backbone.num_patches).expand(len(b["image"]), -1)
                                       >= m.backbone.num_patches - m.num_masked).pred),
    "finetune": Spec("mae_vit/checkpoint.pth", {"num_classes": 10},
                     lambda m, io: (m(io["images"]), io["logits"]),
                     lambda n: {"image": images(n, 40), "label": torch.arange(n) % 10},
                     lambda m, b: m(b["image"])),
    # no upstream probe or dense model exists: the fixture checks that their backbone computes upstream's features
    "linear_probe": Spec("mae_pretrain/checkpoint_released_encoder.pth", {"num_classes": 10, "image_size": 224},
                         lambda m, io: (m.features(io["images"]), io["latent_all_sorted"][:, 0]),
                         lambda n: {"image": images(n, 40), "label": torch.arange(n) % 10},
                         lambda m, b: m(b["image"])),
    "dense_finetune": Spec("mae_pretrain/checkpoint_released_encoder.pth",
                           {"image_size": 224, "hooks": [0, 0, 1, 1], "feature_dim": 16},
                           lambda m, io: (m.features(io["images"])[0].flatten(2).transpose(1, 2),
                                          io["enc_blocks.0"][:, 1:]),
                           lambda n: {"image": images(n, 32), "depth": torch.rand(n, 1, 32, 32) * 5 + 0.5},
                           lambda m, b: m(b["image"])),
}


def test_every_method_has_a_spec():
    assert set(SPECS) == set(METHODS), "add a SPECS entry (and a tests/tiny.py entry) for each registered method"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_builds_from_the_architecture_without_any_file(name):
    model = tiny(name)
    assert model.weights_file is None and model.start_report().endswith("every part from init")
    batch = model.on_after_batch_transfer(SPECS[name].batch(4), 0)
    assert batch["image"].dtype == torch.float32
    assert torch.isfinite(model.training_loss(batch).loss)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_reproduce_the_upstream_fixture(name, parity_dir, caplog):
    spec = SPECS[name]
    path = parity_dir / spec.fixture
    mimzoo_logger = __import__("logging").getLogger("mimzoo")
    mimzoo_logger.propagate = True  # let caplog see the one line
    with caplog.at_level("INFO", logger="mimzoo"):
        model = METHODS[name](weights=str(path), **spec.kwargs).eval()
    lines = [r.getMessage() for r in caplog.records if r.name == "mimzoo"]
    assert len(lines) == 1 and lines[0].startswith(f"{type(model).__name__}: backbone") and str(path) in lines[0]
    io = load_io(path.parent)
    with torch.no_grad():
        ours, theirs = spec.reproduce(model, io)
    assert_close(ours, theirs, atol=1e-5, what=f"{name} from {spec.fixture}")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_cpu_training_step_then_both_round_trips(name, tmp_path):
    spec = SPECS[name]
    model = tiny(name)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
                        limit_val_batches=0)
    batch = spec.batch(4)
    items = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    trainer.fit(model, torch.utils.data.DataLoader(items, batch_size=4))
    after = dict(model.named_parameters())
    assert any(not torch.equal(after[n], p) for n, p in trainable.items()), "the step changed no parameter"

    model.eval()
    views = model.on_after_batch_transfer(spec.batch(2), 0)
    with torch.no_grad():
        expected = spec.output(model, views)
    model.save_pretrained(tmp_path / "saved")
    again = type(model).from_pretrained(tmp_path / "saved")
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    pre = mimzoo.load(tmp_path / "last.ckpt", model="pretrainer")
    vit = mimzoo.load(tmp_path / "last.ckpt")
    assert type(again) is type(model) and type(pre) is type(model)
    with torch.no_grad():
        assert torch.equal(spec.output(again, views), expected)
        assert torch.equal(spec.output(pre, views), expected)
        tokens = views["image"][:, :, :model.backbone.patch_embed.img_size[0], :model.backbone.patch_embed.img_size[1]]
        # the encoder a method evaluates (MIM-Refiner: its EMA) is the checkpoint's backbone
        assert torch.equal(vit.forward_features(tokens), model.evaluated_backbone.forward_features(tokens))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_has_a_recipe(name):
    """Every method trains from a recipe (each recipe's --print_config is checked in test_recipes.py)."""
    cls = METHODS[name]
    paths = {f"mimzoo.methods.{cls.__name__}", f"{cls.__module__}.{cls.__name__}"}
    recipes = [p for p in (ROOT / "recipes").rglob("*.yaml")
               if yaml.safe_load(p.read_text())["model"]["class_path"] in paths]
    assert recipes, f"no recipe trains {cls.__name__}"


PRETRAINING_RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                             if "downstream" not in p.parts and not p.stem.startswith(("finetune", "linear_probe",
                                                                                          "depth")))
RECIPE_SETTINGS = ("views", "masking_rule", "norm_pix_loss", "target", "baseline", "bottleneck")


@pytest.mark.parametrize("recipe", PRETRAINING_RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_every_trainable_parameter_gets_a_gradient(recipe):
    """What plain DDP (no find_unused_parameters: an extra autograd pass every step) needs: with each pretraining
    recipe's own settings (at tiny size), every parameter that trains gets a gradient from the training loss."""
    init = yaml.safe_load(recipe.read_text())["model"]
    cls = next(c for c in METHODS.values() if c.__name__ == init["class_path"].rpartition(".")[2])
    args = init.get("init_args") or {}
    if args.get("target") == "tokens":
        pytest.skip("the BEiT variant needs a user tokenizer (covered in test_semanticmim.py)")
    sizes = ("img_size", "depth", "embed_dim", "num_heads", "patch_size")
    kwargs = {k: v for k, v in (args.get("backbone_kwargs") or {}).items() if k not in sizes}
    model = tiny(cls.name, backbone_kwargs=kwargs, **{k: args[k] for k in RECIPE_SETTINGS if k in args}).train()
    batch = model.on_after_batch_transfer(SPECS[cls.name].batch(4), 0)
    model.training_loss(batch).loss.backward()
    idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not idle, f"{recipe.name}: parameters without a gradient: {idle}"
    strategy = (yaml.safe_load(recipe.read_text()).get("trainer") or {}).get("strategy")
    assert "find_unused" not in str(strategy), recipe.name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_training_forward_is_one_graph_and_does_not_recompile(name):
    """The forward a training step runs compiles with fullgraph=True (a graph break is an error) and a second
    step with new views and masks reuses the graph (torch._dynamo's CompileCounter backend: no inductor here)."""
    from torch._dynamo.testing import CompileCounter

    spec = SPECS[name]
    model = tiny(name).train()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    torch._dynamo.reset()
    try:
        for seed in (0, 1):
            torch.manual_seed(seed)
            views = model.on_after_batch_transfer(spec.batch(4), 0)
            out = spec.output(compiled, views)
            assert torch.isfinite(out.float()).all()
        assert counter.frame_count == 1, f"{name}: {counter.frame_count} graphs for two steps"
    finally:
        torch._dynamo.reset()


COMPILABLE = sorted(n for n, c in METHODS.items() if "compile" in inspect.signature(c.__init__).parameters)


@pytest.mark.parametrize("name", COMPILABLE)
def test_regional_compilation_compiles_each_block_and_keeps_the_loss(name):
    """compile="regional": every block of every `blocks` list is compiled in place (the state dict keeps its
    keys), and a training step gives the eager step's loss and gradients."""
    spec = SPECS[name]
    eager, regional = tiny(name).train(), tiny(name, compile="regional").train()  # same seed, same weights
    assert regional.state_dict().keys() == eager.state_dict().keys()
    lists = [m for n, m in regional.named_modules() if n.rpartition(".")[2] == "blocks"]
    assert lists and all(b._compiled_call_impl is not None for blocks in lists for b in blocks)
    torch._dynamo.reset()
    try:
        views = eager.on_after_batch_transfer(spec.batch(4), 0)
        losses = []
        for model in (eager, regional):
            torch.manual_seed(1)  # the same masks
            loss = model.training_loss(views).loss
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
        grads = [dict((n, p.grad) for n, p in m.named_parameters() if p.grad is not None) for m in (eager, regional)]
        assert grads[0].keys() == grads[1].keys()
        for k in grads[0]:
            torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-3, atol=1e-5)
    finally:
        torch._dynamo.reset()
    with pytest.raises(ConfigError, match="compile must be"):
        tiny(name, compile="blocks")
