"""Every recipe parses with `mimzoo fit --print_config` and its model and data instantiate; the quick start
runs as the README says (a real, short CPU training run)."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mimzoo import zoo
from mimzoo.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))


def instantiate(spec: dict):
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_instantiates(recipe, capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        cli(["fit", "-c", str(recipe), "--print_config"])
    assert done.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    model_spec = config["model"]
    args = model_spec["init_args"]
    weights = args.pop("weights", None)
    if weights in zoo.list_models():  # no download in tests: the same architecture at random init
        entry = zoo.entry(weights)
        args.update(backbone=entry["arch"], backbone_kwargs={**(args.get("backbone_kwargs") or {}),
                                                             "num_heads": entry["num_heads"]})
    elif weights:  # a file an earlier recipe writes (or the user brings): the recipe names its architecture
        assert args.get("backbone"), f"{recipe.name}: weights {weights} is a file, so the recipe names the backbone"
    with torch.device("meta"):  # ViT-H at full size, without allocating it
        model = instantiate(model_spec)
    assert sum(p.numel() for p in model.parameters()) > 0
    instantiate(config["data"])


def test_paper_recipe_matches_the_paper():
    config = yaml.safe_load((ROOT / "recipes/mae/mae_vit_large_patch16.yaml").read_text())
    t, m, d = config["trainer"], config["model"]["init_args"], config["data"]["init_args"]
    assert d["batch_size"] * t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"] == 4096
    o = m["optim"]
    assert (o["blr"], o["weight_decay"], o["warmup_epochs"], m["mask_ratio"]) == (1.5e-4, 0.05, 40, 0.75)
    assert (m["decoder_embed_dim"], m["decoder_depth"]) == (512, 8) and m["norm_pix_loss"] is None  # file, else True


@pytest.mark.slow
@pytest.mark.parametrize("recipe, run_dir, tokens", [("mae_tiny", "quickstart", 65),
                                                    ("croco_tiny", "croco_quickstart", 64),
                                                    ("depth_tiny", "depth_quickstart", 65),
                                                    ("siameseim_tiny", "quickstart_siameseim", 65),
                                                    ("semanticmim_tiny", "quickstart_semanticmim", 8 + 36)])
def test_quickstart_command(tmp_path, recipe, run_dir, tokens):
    """The README's first command (minus the install), its cross-view and SiameseIM twins and the depth fine-tuning
    example: a real CPU training run that saves a checkpoint and pictures, and whose loss falls."""
    env = {**os.environ, "MIMZOO_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "mimzoo.cli", "fit", "-c",
                          str(ROOT / f"recipes/quickstart/{recipe}.yaml"), "--trainer.enable_progress_bar=false"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "runs" / run_dir
    assert (out / "checkpoints" / "last.ckpt").is_file()
    pictures = {"depth_tiny": "predictions", "siameseim_tiny": "geometry",
                "semanticmim_tiny": "attention"}.get(recipe, "reconstructions")
    assert len(list((out / pictures).glob("epoch_*.png"))) >= 2
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    # SemanticMIM's HOG loss starts low (0.08) and falls most within the first logged steps
    drop = 0.85 if recipe == "semanticmim_tiny" else 0.75
    assert len(losses) > 10 and sum(losses[-5:]) / 5 < drop * sum(losses[:3]) / 3, losses
    if recipe == "depth_tiny":  # on the held-out crops it beats predicting the median training depth everywhere
        from mimzoo.data import DenseDataModule
        from mimzoo.tasks import DepthMetrics

        data = DenseDataModule(dataset="stereo_sample", size=64, num_crops=128)
        data.setup()
        train = torch.stack([item["depth"] for item in data.train_set])
        baseline = DepthMetrics()
        for item in data.val_set:
            baseline.update(torch.full_like(item["depth"], train[train > 0].median().item())[None], item["depth"][None])
        base = baseline.compute()
        final = [r for r in rows if r.get("val/abs_rel")][-1]
        assert float(final["val/abs_rel"]) < 0.9 * base["abs_rel"].item(), (final, base)
        assert float(final["val/delta1"]) > base["delta1"].item() + 0.1, (final, base)
    import mimzoo

    vit = mimzoo.load(out / "checkpoints" / "last.ckpt")
    size = 96 if recipe == "semanticmim_tiny" else 64  # a learned position table: its own size
    assert vit.forward_features(torch.zeros(1, 3, size, size)).shape == (1, tokens, 192)
