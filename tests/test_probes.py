"""Linear and few-shot probes: the LARS steps equal MAE's util/lars.py rule, the few-shot logistic regression equals
scikit-learn's on the equivalent C, a LinearProbe fit trains the head and leaves the backbone untouched, and the
`mimzoo probe linear|fewshot` commands print JSON."""
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from timm.optim import Lars

import mimzoo
from mimzoo.cli import main as cli
from mimzoo.methods import LinearProbe
from mimzoo.optim import MAELars
from mimzoo.tasks import probe
from mimzoo.tasks.fewshot import LAMBDA, cyanure_preprocess, fewshot_accuracy, fewshot_splits, fit_logistic
from mimzoo.tasks.linear import linear_probe_on_features

from tiny import tiny


def mae_lars_reference(params, grads_per_step, lr, wd, momentum=0.9, trust=1e-3):
    """MAE util/lars.py, written out from its rule: decay and trust-ratio scaling for ndim > 1 only, then
    mu = momentum * mu + d, p -= lr * mu."""
    params = [p.clone() for p in params]
    mus = [torch.zeros_like(p) for p in params]
    for grads in grads_per_step:
        for p, g, mu in zip(params, grads, mus):
            d = g
            if p.ndim > 1:
                d = g + wd * p
                pn, dn = p.norm(), d.norm()
                d = d * (trust * pn / dn if pn > 0 and dn > 0 else 1.0)
            mu.mul_(momentum).add_(d)
            p.sub_(lr * mu)
    return params


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_lars_takes_maes_steps(wd):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in start] for _ in range(4)]
    expected = mae_lars_reference(start, grads, lr=6.4, wd=wd)

    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = MAELars(params, lr=6.4, weight_decay=wd)
    for step in grads:
        for p, grad in zip(params, step):
            p.grad = grad.clone()
        opt.step()
        assert all(torch.equal(p.grad, grad) for p, grad in zip(params, step))  # gradients left as they were
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)

    # first step of the matrix: |dW| = lr * trust * |W| (the LARS property); the vector: plain lr * g
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = MAELars(params, lr=6.4, weight_decay=wd)
    for p, grad in zip(params, grads[0]):
        p.grad = grad.clone()
    opt.step()
    assert (params[0].detach() - start[0]).norm().item() == pytest.approx(6.4e-3 * start[0].norm().item(), rel=1e-12)
    torch.testing.assert_close(params[1].detach(), start[1] - 6.4 * grads[0][1], rtol=0, atol=1e-12)

    # why the wrapper exists: timm's Lars as MAE would call it does not take these steps
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    opt = Lars(plain, lr=6.4, momentum=0.9, weight_decay=wd, trust_coeff=1e-3)
    for step in grads:
        for p, grad in zip(plain, step):
            p.grad = grad.clone()
        opt.step()
    assert not torch.allclose(plain[0].detach(), expected[0], rtol=1e-6, atol=1e-9)


def digits_pixels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float64), torch.tensor(digits.target)
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_fewshot_splits_are_deterministic_balanced_and_nested():
    y = digits_pixels()[1]
    one, two, five = (fewshot_splits(y, k, seed=3) for k in (1, 2, 5))
    assert torch.equal(five, fewshot_splits(y, 5, seed=3))
    assert torch.equal(torch.bincount(y[five]), torch.full((10,), 5))
    assert set(one.tolist()) < set(two.tolist()) < set(five.tolist())
    assert not torch.equal(five, fewshot_splits(y, 5, seed=4))


@pytest.mark.parametrize("shots, preprocess_test", [(1, False), (5, False), (5, True)])
def test_fewshot_logistic_regression_equals_scikit_learn(shots, preprocess_test):
    """C = 1 / (n lambda) with lambda = 0.00025 / n: scikit-learn's objective is C n times upstream's."""
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = digits_pixels()
    idx = fewshot_splits(ytr, shots, seed=0)
    x = cyanure_preprocess(xtr[idx])
    assert torch.allclose(x.mean(1), torch.zeros(len(x), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(x.norm(dim=1), torch.ones(len(x), dtype=torch.float64))
    ref = LogisticRegression(C=1 / LAMBDA, fit_intercept=False, tol=1e-12, max_iter=100_000)
    ref.fit(x.numpy(), ytr[idx].numpy())
    test = cyanure_preprocess(xte) if preprocess_test else xte
    expected = ref.predict(test.numpy())

    w = fit_logistic(x, ytr[idx], LAMBDA / len(x))
    got = (test @ w).argmax(1).numpy()
    assert (got == expected).all()
    torch.testing.assert_close(w.T, torch.tensor(ref.coef_), rtol=0, atol=1e-3 * w.abs().max().item())
    acc = fewshot_accuracy(xtr[idx], ytr[idx], xte, yte, preprocess_test=preprocess_test)
    assert abs(acc - (expected == yte.numpy()).mean() * 100) < 1e-6
    assert acc > 30  # chance is 10 %


@pytest.fixture(scope="module")
def digits_model(parity_dir, tmp_path_factory):
    """The tiny MAE fixture encoder at 64 px (16 patches) saved as a mimzoo folder, and its cls features of
    the digits, cached where the CLI finds them."""
    root = tmp_path_factory.mktemp("digits")
    mimzoo.load(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth", img_size=64).save_pretrained(
        root / "model")
    feats = probe.frozen_features(str(root / "model"), "digits", pooling="cls", batch_size=256,
                                  cache_dir=str(root / "cache"), progress=False)
    return root, feats


def test_linear_probe_on_features_beats_chance_on_digits(digits_model):
    xtr, ytr, xte, yte = digits_model[1]
    out = linear_probe_on_features(xtr, ytr, xte, yte, epochs=90, batch_size=256)
    assert out["top1"] > 50 and out["top5"] > 85  # chance: 10 % / 50 %
    assert linear_probe_on_features(xtr, ytr, xte, yte, epochs=90, batch_size=256) == out  # seeded


def digit_batches(n: int = 256, size: int = 64, batch: int = 32) -> list[dict]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16
    images = (torch.nn.functional.interpolate(x, size=size, mode="nearest").repeat(1, 3, 1, 1) * 255).to(torch.uint8)
    labels = torch.tensor(digits.target[:n])
    return [{"image": images[i:i + batch], "label": labels[i:i + batch]} for i in range(0, n, batch)]


def test_linear_probe_fit_trains_the_head_only(parity_dir, tmp_path):
    # 32 px (4 patches) keeps it fast; LARS moves W by ~lr * 1e-3 of its norm per step, so 96 steps need an lr
    # well above MAE's 6.4 (7000 steps) to show learning; training sees random crops (train mode), the loss is
    # measured on centre crops
    torch.manual_seed(0)
    model = LinearProbe(weights=str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth"),
                        num_classes=10, image_size=32, optim={"lr": 20.0, "warmup_epochs": 1})
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head.fc.weight.detach().clone()
    data = digit_batches(256, size=32, batch=16)

    def eval_loss():  # eval views (resize + centre crop) and running BatchNorm statistics: deterministic
        model.eval()
        with torch.no_grad():
            return sum(model.training_loss(model.on_after_batch_transfer(dict(b), 0)).loss for b in data) / len(data)

    before = eval_loss()
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))

    opt = trainer.optimizers[0]
    assert isinstance(opt, MAELars)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    assert not model.backbone.training and all(not p.requires_grad for p in model.backbone.parameters())
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())
    assert not torch.equal(model.head.fc.weight, head_before)
    assert eval_loss() < 0.8 * before

    # the checkpoint rebuilds both the backbone and the whole probe
    trainer.save_checkpoint(tmp_path / "probe.ckpt")
    vit = mimzoo.load(tmp_path / "probe.ckpt")
    assert all(torch.equal(vit.state_dict()[k], v) for k, v in backbone_before.items())
    again = mimzoo.load(tmp_path / "probe.ckpt", model="pretrainer")
    assert isinstance(again, LinearProbe)
    images = model.on_after_batch_transfer(dict(data[0]), 0)["image"]
    assert torch.equal(again(images), model(images))


def test_probe_linear_and_fewshot_commands(digits_model, capsys):
    root, _ = digits_model
    common = ["--model", str(root / "model"), "--data", "digits", "--pooling", "cls", "--cache", str(root / "cache"),
              "--quiet"]
    assert cli(["probe", "linear", *common]) == 0
    linear = json.loads(capsys.readouterr().out)
    assert linear["probe"] == "linear" and linear["lr"] == 6.4 and linear["epochs"] == 90
    assert 50 < linear["linear_top1"] <= linear["linear_top5"] <= 100

    assert cli(["probe", "fewshot", *common, "--shots", "1", "5", "--seeds", "0", "1"]) == 0
    few = json.loads(capsys.readouterr().out)
    assert few["seeds"] == [0, 1]
    for k in (1, 5):
        runs = few[f"{k}shot_top1_runs"]
        assert len(runs) == 2 and few[f"{k}shot_top1_mean"] == pytest.approx(sum(runs) / 2, abs=0.01)
        assert few[f"{k}shot_top1_std"] == pytest.approx(abs(runs[0] - runs[1]) / 2 ** 0.5, abs=0.01)
    assert 10 < few["1shot_top1_mean"] < few["5shot_top1_mean"] <= 100


def test_linear_probe_pooling_without_cls_token():
    """CroCo-style backbones have no cls token: 'cls' is refused at construction, 'avg' pools the patches."""
    without_cls = {"class_token": False}
    with pytest.raises(ValueError, match="pooling='avg'"):
        tiny(LinearProbe, backbone_kwargs=without_cls, num_classes=3)
    model = tiny(LinearProbe, backbone_kwargs=without_cls, num_classes=3, pooling="avg").eval()
    images = torch.rand(2, 3, 32, 32)
    tokens = model.backbone.forward_features(images)
    torch.testing.assert_close(model.features(images), tokens.mean(1))
    assert model(images).shape == (2, 3)


def test_recipe_fits_through_the_cli_and_reloads(parity_dir, tmp_path):
    """`mimzoo fit` with the ViT-B recipe, shrunk to the CPU: trains, validates, and its checkpoint rebuilds the
    probe with mimzoo.load (LightningCLI's extra `_class_path` hyperparameter included)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c, scale in (("a", 255), ("b", 100)):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                pixels = (torch.rand(40, 48, 3, generator=g) * scale).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    recipe = str(Path(__file__).resolve().parents[1] / "recipes/downstream/linear_probe_vit_base.yaml")
    assert cli(["fit", "-c", recipe, "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
                "--trainer.precision=32", "--trainer.max_epochs=1", "--trainer.accumulate_grad_batches=2",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false",
                f"--model.init_args.weights={parity_dir / 'mae_pretrain' / 'checkpoint_released_encoder.pth'}",
                "--model.init_args.num_classes=2", "--model.init_args.image_size=32",
                f"--data.init_args.root={tmp_path}", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
                "--data.init_args.size=37", "--data.init_args.pin_memory=false"]) == 0
    last = next((tmp_path / "run").rglob("last.ckpt"))
    probe_again = mimzoo.load(last, model="pretrainer")
    assert isinstance(probe_again, LinearProbe) and probe_again.hparams.num_classes == 2
    assert mimzoo.load(last).data_config["input_size"] == (3, 32, 32)


def test_grid_heads_train_as_separate_runs_and_the_best_is_reported():
    """Heads trained side by side on the same batches end where separate runs with the same seed end; the grid
    reports the best (feature, lr) and covers every pair."""
    from sklearn.datasets import load_digits

    from mimzoo.tasks.linear import linear_grid_on_features, train_heads

    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32), torch.tensor(digits.target)
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[1000:], y[1000:]
    kw = dict(epochs=3, batch_size=128, warmup_epochs=0.3, seed=0, device="cpu")
    together = train_heads(xtr, ytr, xte, yte, [0.01, 0.3], "sgd", **kw)
    alone = [train_heads(xtr, ytr, xte, yte, [lr], "sgd", **kw)[0] for lr in (0.01, 0.3)]
    assert together == alone
    assert together[0]["top1"] != together[1]["top1"]
    out = linear_grid_on_features({"raw": (xtr, xte), "half": (xtr[:, ::2], xte[:, ::2])}, ytr, yte, lrs=(0.01, 0.3),
                            epochs=3, batch_size=128)
    assert len(out["grid"]) == 4 and {r["feature"] for r in out["grid"]} == {"raw", "half"}
    assert out["best"]["top1"] == max(r["top1"] for r in out["grid"]) > 80


def test_linear_grid_command(parity_dir, tmp_path, capsys):
    import json

    from mimzoo.cli import main as cli

    model = str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth")
    assert cli(["probe", "linear", "--grid", "--model", model, "--data", "digits", "--quiet", "--cache",
                str(tmp_path), "--batch-size", "256"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["grid"]) == 52 and out["best_feature"] in ("cls", "cls_avg", "cls_last4", "cls_avg_last4")
    assert out["linear_top1"] == max(r["top1"] for r in out["grid"]) > 30
    assert (tmp_path / "train_cls_avg.safetensors").is_file()
