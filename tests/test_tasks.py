"""Probes and metrics against reference computations: scikit-learn for k-NN, numpy for the dense metrics, and
a 2-process gloo run for the DDP reduction."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mimzoo.tasks import DepthMetrics, SurfaceNormalMetrics, knn_predict, segmentation_metrics


@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_equals_scikit_learn(k):
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) + 0.01 * torch.randn(len(digits.data), 64,
                                                                             generator=torch.Generator().manual_seed(0))
    y = torch.tensor(digits.target)
    train, test = slice(0, 1200), slice(1200, None)
    t = 0.07
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / t)).fit(x[train].numpy(), y[train].numpy())
    expected = ref.predict(x[test].numpy())
    got = knn_predict(x[train], y[train], x[test], k=k, temperature=t, chunk_size=100).numpy()
    assert (got == expected).mean() == 1.0
    assert abs((got == y[test].numpy()).mean() - (expected == y[test].numpy()).mean()) < 1e-6


def numpy_depth(pred, target):
    out = {k: [] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")}
    for p, t in zip(pred.reshape(len(pred), -1), target.reshape(len(target), -1)):
        v = t > 0
        if not v.any():
            continue
        p, t = np.maximum(p[v], 1e-6), t[v]
        r = np.maximum(p / t, t / p)
        vals = dict(abs_rel=np.mean(np.abs(p - t) / t), sq_rel=np.mean((p - t) ** 2 / t),
                    rmse=np.sqrt(np.mean((p - t) ** 2)), rmse_log=np.sqrt(np.mean((np.log(p) - np.log(t)) ** 2)),
                    log10=np.mean(np.abs(np.log10(p) - np.log10(t))), delta1=np.mean(r < 1.25),
                    delta2=np.mean(r < 1.25 ** 2), delta3=np.mean(r < 1.25 ** 3))
        for key in out:
            out[key].append(vals[key])
    return {k: np.mean(v) for k, v in out.items()}


def random_depth(seed, n=4):
    g = np.random.default_rng(seed)
    target = g.uniform(0.5, 10, (n, 1, 12, 16))
    target[g.random(target.shape) < 0.3] = 0  # invalid pixels
    target[0] = 0  # an image with no valid pixel at all
    pred = target * g.uniform(0.7, 1.4, target.shape) + (target == 0) * 5
    return pred, target


def test_depth_metrics_equal_numpy():
    m = DepthMetrics()
    preds, targets = zip(*(random_depth(s) for s in range(3)))
    for p, t in zip(preds, targets):
        m.update(torch.tensor(p), torch.tensor(t)[:, 0])  # (B, 1, H, W) pred with (B, H, W) target
    got = m.compute()
    expected = numpy_depth(np.concatenate(preds), np.concatenate(targets))
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5, abs=1e-7), key


def random_normals(seed):
    g = np.random.default_rng(seed)
    target = g.normal(size=(3, 3, 10, 10))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target[:, :, :2] = 0  # invalid rows
    pred = target + 0.4 * g.normal(size=target.shape)
    return pred, target


def numpy_normals(pred, target):
    v = np.linalg.norm(target, axis=1) > 0
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    cos = np.clip((p * target).sum(1), -1, 1)[v]
    e = np.degrees(np.arccos(cos))
    return dict(mean=e.mean(), median=np.median(e), rmse=np.sqrt((e ** 2).mean()), pct_11_25=(e < 11.25).mean() * 100,
                pct_22_5=(e < 22.5).mean() * 100, pct_30=(e < 30).mean() * 100)


def test_normal_metrics_equal_numpy():
    m = SurfaceNormalMetrics()
    preds, targets = zip(*(random_normals(s) for s in range(2)))
    for p, t in zip(preds, targets):
        m.update(torch.tensor(p), torch.tensor(t))
    got = m.compute()
    for key, value in numpy_normals(np.concatenate(preds), np.concatenate(targets)).items():
        assert got[key].item() == pytest.approx(value, rel=1e-5, abs=1e-5), key


def _ddp_worker(rank, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    depth, normals = DepthMetrics(), SurfaceNormalMetrics()
    p, t = random_depth(rank)
    depth.update(torch.tensor(p), torch.tensor(t))
    pn, tn = random_normals(rank)
    normals.update(torch.tensor(pn), torch.tensor(tn))
    seg = segmentation_metrics(5)
    seg.update(*random_labels(rank))
    results[rank] = ({k: v.item() for k, v in depth.compute().items()},
                     {k: v.item() for k, v in normals.compute().items()},
                     {k: v.item() for k, v in seg.compute().items()})
    dist.destroy_process_group()


def random_labels(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randint(0, 4 + seed, (2, 12, 12), generator=g), torch.randint(0, 5, (2, 12, 12), generator=g)
    target[:, :3] = 255
    return pred, target


def numpy_segmentation(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    keep = target != 255
    cm = np.bincount(target[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(num_classes, -1)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    return {"miou": (inter[union > 0] / union[union > 0]).mean(), "pixel_acc": inter.sum() / keep.sum()}


def test_metrics_reduce_across_two_processes():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, results), nprocs=2, join=True)
    depth_ref = numpy_depth(*map(np.concatenate, zip(random_depth(0), random_depth(1))))
    normal_ref = numpy_normals(*map(np.concatenate, zip(random_normals(0), random_normals(1))))
    seg_ref = numpy_segmentation(*[np.concatenate([random_labels(r)[i].numpy().ravel() for r in range(2)])
                                   for i in range(2)], 5)
    for rank in range(2):
        depth, normals, seg = results[rank]
        for key, value in seg_ref.items():
            assert seg[key] == pytest.approx(value, abs=1e-6), key
        for key, value in depth_ref.items():
            assert depth[key] == pytest.approx(value, rel=1e-5), key
        for key, value in normal_ref.items():
            assert normals[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_knn_probe_command_on_digits(parity_dir, tmp_path, capsys):
    """The quick example: k-NN on scikit-learn's digits with a (tiny, fixture) backbone, features cached."""
    import json

    from mimzoo.cli import main as cli

    args = ["probe", "knn", "--model", str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth"),
            "--data", "digits", "--k", "20", "--cache", str(tmp_path), "--quiet", "--batch-size", "256"]
    assert cli(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["knn20_top1"] > 50  # random-init-like tiny ViT features still separate digits well above 10 %
    assert (tmp_path / "train_default.safetensors").is_file()
    assert cli(args) == 0 and json.loads(capsys.readouterr().out) == result  # same numbers from the cache


def test_prenorm_cls_pooling_is_the_last_block_before_the_final_norm(parity_dir):
    import mimzoo
    from mimzoo.tasks import pooled

    vit = mimzoo.load(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        x, _ = vit.embed(images)
        for blk in vit.blocks:
            x = blk(x)
        raw = pooled(vit, images, "cls_prenorm")
        assert torch.allclose(raw, x[:, 0], atol=1e-6)
        assert torch.allclose(pooled(vit, images, "cls"), vit.norm(x)[:, 0], atol=1e-5)
        assert not torch.allclose(raw, pooled(vit, images, "cls"), atol=1e-2)


def test_knn_probe_on_an_imagenet_style_folder(parity_dir, tmp_path, capsys):
    """`--data DIR` reads root/train/<class>/* and root/val/<class>/*; a wrong layout says what it expected."""
    import json

    import numpy as np
    from PIL import Image

    from mimzoo.cli import main as cli

    rng = np.random.default_rng(0)
    for split, n in [("train", 6), ("val", 3)]:
        for label, channel in [("n01_red", 0), ("n02_blue", 2)]:
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (40, 48, 3), dtype=np.uint8)
                pixels[..., channel] += 170
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{i}.png")
    model = str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth")
    assert cli(["probe", "knn", "--model", model, "--data", str(tmp_path / "data"), "--k", "3", "--quiet",
                "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["knn3_top1"] == 100.0
    assert cli(["probe", "knn", "--model", model, "--data", str(tmp_path / "data" / "train"), "--quiet",
                "--workers", "0"]) == 2
    assert "one sub-folder per class" in capsys.readouterr().err


def test_last4_poolings_concatenate_the_raw_last_blocks():
    from mimzoo.models import create_vit
    from mimzoo.tasks import pooled

    vit = create_vit("vit_tiny_patch16", depth=6, img_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x, rope = vit.embed(images)
        raw = []
        for blk in vit.blocks:
            x = vit._run_block(blk, x, rope)
            raw.append(x)
        last4 = raw[-4:]
        cls4 = pooled(vit, images, "cls_last4")
        both4 = pooled(vit, images, "cls_avg_last4")
    p = vit.num_prefix_tokens
    assert torch.allclose(cls4, torch.cat([r[:, 0] for r in last4], 1), atol=1e-5)
    assert torch.allclose(both4, torch.cat([torch.cat([r[:, 0], r[:, p:].mean(1)], 1) for r in last4], 1), atol=1e-5)
