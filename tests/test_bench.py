"""`mimzoo bench`: rows equal the numbers of single `mimzoo probe` runs, an interrupted bench resumes without
recomputing finished rows, changed weights are benched again, a model that fails to load is reported in its rows
while the others go on, the leaderboard and picture are made; FLOPs include the CPU attention; features on two
processes through Lightning equal those of one."""
import json

import pytest
import torch
from PIL import Image

import mimzoo
from mimzoo.cli import main as cli
from mimzoo.errors import ConfigError
from mimzoo.flops import flop_counter
from mimzoo.tasks import bench, probe
from mimzoo.tasks.bench_report import short
from mimzoo.tasks.features import extract, model_digest
from mimzoo.tasks.pooling import pooled

SIZE = 32  # 4 patches of 16: the tiny fixtures run the digits in about a second


@pytest.fixture(scope="module")
def models(parity_dir, tmp_path_factory):
    """The MAE and MIM-Refiner parity encoders at 32 px, as mimzoo folders."""
    root = tmp_path_factory.mktemp("bench_models")
    out = []
    for family, file in (("mae_pretrain", "checkpoint_released_encoder.pth"), ("mim_refiner", "checkpoint.pth")):
        mimzoo.load(parity_dir / family / file, img_size=SIZE).save_pretrained(root / family)
        out.append(str(root / family))
    return out


def values(rows, model, probe_name):
    return {r["metric"]: r["value"] for r in rows if r["model"] == model and r["probe"] == probe_name}


def test_bench_rows_equal_single_probe_runs(models, tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli(["bench", "--models", *models, "--data", "digits", "--probes", "knn,linear,fewshot", "--out",
                str(out), "--epochs", "20", "--shots", "1", "2", "--seeds", "0", "1", "--quiet"]) == 0
    rows = json.loads((out / "bench.json").read_text())["rows"]
    capsys.readouterr()
    for model in models:
        assert cli(["probe", "knn", "--model", model, "--data", "digits", "--quiet"]) == 0
        knn = json.loads(capsys.readouterr().out)
        assert values(rows, model, "knn") == {"knn20_top1": knn["knn20_top1"], "knn200_top1": knn["knn200_top1"]}
        assert cli(["probe", "linear", "--model", model, "--data", "digits", "--epochs", "20", "--quiet"]) == 0
        linear = json.loads(capsys.readouterr().out)
        assert values(rows, model, "linear") == {"linear_top1": linear["linear_top1"],
                                                 "linear_top5": linear["linear_top5"]}
        assert cli(["probe", "fewshot", "--model", model, "--data", "digits", "--shots", "1", "2", "--seeds", "0",
                    "1", "--quiet"]) == 0
        few = json.loads(capsys.readouterr().out)
        got = [r for r in rows if r["model"] == model and r["probe"] == "fewshot"]
        assert {r["metric"]: (r["value"], r["std"], r["runs"]) for r in got} == {
            f"{k}shot_top1_mean": (few[f"{k}shot_top1_mean"], few[f"{k}shot_top1_std"], few[f"{k}shot_top1_runs"])
            for k in (1, 2)}
        assert {r["feature"] for r in got} == {"cls_prenorm"}
        assert 10 < values(rows, model, "knn")["knn20_top1"] <= 100  # chance is 10 %

    # what each row says about its model
    vit = mimzoo.load(models[0])
    first = next(r for r in rows if r["model"] == models[0])
    assert first["params"] == sum(p.numel() for p in vit.parameters())
    assert first["image_size"] == SIZE and first["feature"] == "default (cls)" and first["method"] == "mae"
    assert first["model_digest"] == model_digest(vit) and first["images_per_s"] > 0
    assert first["gflops"] == pytest.approx(vit_forward_flops(vit, SIZE) / 1e9, abs=1e-3)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 2 * (2 + 2 + 2)

    # the leaderboard: one table per protocol, best first, and the picture: one panel per protocol
    board = (out / "bench.md").read_text()
    assert board.count("\n## digits · ") == 3
    knn_table = board.split("## digits · knn")[1].split("##")[0]
    ranked = [line.split(" | ")[1] for line in knn_table.splitlines() if line.startswith("| 1 ") or
              line.startswith("| 2 ")]
    scores = {m: values(rows, m, "knn")["knn20_top1"] for m in models}
    assert ranked == [short(m) for m in sorted(models, key=lambda m: -scores[m])]
    with Image.open(out / "bench.png") as png:
        assert png.format == "PNG" and png.width == 3 * 600 and png.height > 440


def vit_forward_flops(vit, size: int) -> float:
    """2 x multiply-adds of a ViT's forward, written out: patch embedding, qkv / projection / MLP matmuls, and
    the two attention products, per image."""
    d, p = vit.embed_dim, vit.patch_embed.patch_size[0]
    n = (size // p) ** 2 + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    per_block = n * (4 * d * d + 2 * d * hidden) + 2 * n * n * d
    return 2 * ((size // p) ** 2 * 3 * p * p * d + len(vit.blocks) * per_block)


def test_flop_counter_counts_attention_on_the_cpu(models):
    vit = mimzoo.load(models[0])
    counter = flop_counter()
    with counter, torch.no_grad():
        pooled(vit, torch.zeros(2, 3, SIZE, SIZE), "default")
    assert counter.get_total_flops() == vit_forward_flops(vit, SIZE) * 2
    counts = {str(k) for k in counter.get_flop_counts()["Global"]}
    assert any("scaled_dot_product" in k for k in counts)  # the kernel torch's own table leaves out


def test_interrupted_bench_resumes_without_recomputing(models, tmp_path):
    out = tmp_path / "bench"
    # a bench killed after the first model leaves what a bench of that model alone leaves: bench.json is
    # rewritten whole (atomically) after every (model, probe)
    first = bench.bench(models[:1], "digits", "knn", out, progress=False)
    assert first["computed"] == [(models[0], "knn")]
    kept = list(first["rows"])
    features = sorted((out / "features").rglob("*.safetensors"))
    stamps = {f: f.stat().st_mtime_ns for f in features}

    again = bench.bench(models, "digits", "knn,linear", out, progress=False, epochs=20)
    assert again["reused"] == [(models[0], "knn")]
    assert again["computed"] == [(models[0], "linear"), (models[1], "knn"), (models[1], "linear")]
    for row in kept:  # the finished rows, untouched: same values, same timings, same time of finishing
        assert row in again["rows"]
    assert {f: f.stat().st_mtime_ns for f in features} == stamps  # the first model's features were read back
    on_disk = json.loads((out / "bench.json").read_text())["rows"]
    assert on_disk == again["rows"]

    # a third run computes nothing
    third = bench.bench(models, "digits", "knn,linear", out, progress=False, epochs=20)
    assert third["computed"] == [] and len(third["reused"]) == 4 and third["rows"] == again["rows"]

    # other settings are another protocol: new rows beside the old ones, never mixed into them
    other = bench.bench(models[:1], "digits", "knn", out, progress=False, ks=[5])
    assert other["computed"] == [(models[0], "knn")]
    assert {r["metric"] for r in other["rows"] if r["probe"] == "knn"} == {"knn5_top1", "knn20_top1", "knn200_top1"}
    assert "knn (k 5 ·" in (out / "bench.md").read_text()


def test_changed_weights_are_benched_again(models, tmp_path):
    model = tmp_path / "model"
    vit = mimzoo.load(models[0])
    vit.save_pretrained(model)
    out = tmp_path / "bench"
    before = bench.bench([str(model)], "digits", "knn", out, progress=False)["rows"]
    with torch.no_grad():
        vit.blocks[0].mlp.fc1.weight.mul_(-1)
    vit.save_pretrained(model)  # the same path, other weights
    after = bench.bench([str(model)], "digits", "knn", out, progress=False)
    assert after["computed"] == [(str(model), "knn")]
    assert len(after["rows"]) == len(before)  # replaced, not listed twice
    assert {r["model_digest"] for r in after["rows"]} == {model_digest(vit)} != {before[0]["model_digest"]}


def test_a_model_that_fails_to_load_is_reported_and_the_rest_go_on(models, tmp_path, capsys):
    out = tmp_path / "bench"
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    code = cli(["bench", "--models", str(broken), models[0], "mae_vit_no_such_name", "--data", "digits",
                "--probes", "knn", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    rows = json.loads((out / "bench.json").read_text())["rows"]
    by_model = {r["model"]: r for r in rows}
    assert by_model[models[0]]["status"] == "ok"
    for bad in (str(broken), "mae_vit_no_such_name"):
        assert by_model[bad]["status"] == "failed" and by_model[bad]["error"].startswith("load: ")
        assert f"failed: {bad} (knn): load: " in err
    assert "mae_vit_no_such_name" in by_model["mae_vit_no_such_name"]["error"]
    board = (out / "bench.md").read_text()
    assert "## Failed" in board and "broken.pth" in board.split("## Failed")[1]

    # failed rows are tried again; the finished one is kept
    again = bench.bench([str(broken), models[0]], "digits", "knn", out, progress=False)
    assert again["reused"] == [(models[0], "knn")] and again["failed"] == [(str(broken), "knn")]


def test_bad_input_is_one_line_and_loses_nothing(models, tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.json").write_text("{ half a file")
    assert cli(["bench", "--models", models[0], "--data", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mimzoo bench: error: ") and "bench.json" in err and len(err.splitlines()) == 1
    assert (out / "bench.json").read_text() == "{ half a file"  # left as it was
    for argv, said in ((["--probes", "knn,svm"], "--probes"), (["--models", "mae_vit_*_nothing*"], "matches no"),
                       (["--data", str(tmp_path / "missing")], "missing")):
        base = {"--models": [models[0]], "--data": ["digits"], "--probes": ["knn"], "--out": [str(tmp_path / "b")]}
        base[argv[0]] = argv[1:]
        assert cli(["bench", *[x for k, v in base.items() for x in (k, *v)], "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b" / "bench.json").exists()


def test_model_patterns():
    names = bench.resolve_models(["mae_vit_base_patch16*", "mae_vit_base_patch16"])
    assert names and all(n.startswith("mae_vit_base_patch16") for n in names)
    assert len(names) == len(set(names))  # each once
    registry = mimzoo.zoo.registry()
    assert not any("alias_of" in registry[n] for n in names)
    with pytest.raises(ConfigError, match="matches no zoo name"):
        bench.resolve_models(["no_such_family_*"])


def test_protocol_settings():
    got = bench.protocols("knn,fewshot", ks=(10,), standardize=True, shots=[1], fewshot_pooling="avg",
                          pooling="cls", epochs=5)
    assert got["knn"] == {**bench.DEFAULTS["knn"], "ks": [10], "standardize": True, "pooling": "cls"}
    assert got["fewshot"] == {**bench.DEFAULTS["fewshot"], "shots": [1], "pooling": "avg"}
    with pytest.raises(ConfigError, match="unknown bench setting"):
        bench.protocols("knn", neighbours=3)
    with pytest.raises(ConfigError):
        bench.protocols("knn", ks=[0])


def test_features_on_two_processes_equal_one(models):
    vit = mimzoo.load(models[0])
    _, test = probe.digits_loaders(SIZE, batch_size=64)
    one = extract(vit, test, "cls", device="cpu", progress=False)
    two = extract(vit, test, "cls", device="cpu", progress=False, devices=2)
    assert torch.equal(one[1], two[1])  # the same order
    torch.testing.assert_close(two[0], one[0], rtol=0, atol=1e-6)


def test_input_sizes_are_rows_of_their_own(models, tmp_path):
    out = tmp_path / "bench"
    native = bench.bench(models[:1], "digits", "knn", out, progress=False)["rows"]
    larger = bench.bench(models[:1], "digits", "knn", out, progress=False, size=48)["rows"]
    assert [r for r in larger if r["size_asked"] is None] == native  # kept beside the new size
    resized = [r for r in larger if r["size_asked"] == 48]
    assert {r["image_size"] for r in resized} == {48} and resized[0]["gflops"] > native[0]["gflops"]
    board = (out / "bench.md").read_text()
    assert f"{short(models[0])} @32 |" in board and f"{short(models[0])} @48 |" in board


def test_checkpoints_of_the_same_file_name_are_told_apart_in_the_report():
    from mimzoo.tasks.bench_report import leaderboard, picture

    settings = bench.DEFAULTS["knn"]
    rows = [{"model": f"runs/{run}/checkpoints/last.ckpt", "size_asked": None,
             "name": f"runs/{run}/checkpoints/last.ckpt",
             "probe": "knn", "metric": metric, "value": value, "feature": "default (cls)", "image_size": 224,
             "params": 5_000_000, "gflops": gflops, "images_per_s": 10.0, "speed_device": "cpu", "method": "mae",
             "settings": settings, "data": "digits", "status": "ok"}
            for run, gflops, top1 in (("a", 1.0, 60.0), ("b", 30.0, 70.0))
            for metric, value in (("knn20_top1", top1), ("knn200_top1", top1 - 5))]
    board = leaderboard(rows)
    assert "| 1 | b/checkpoints/last.ckpt | **70.00** | 65.00 |" in board
    assert "| 2 | a/checkpoints/last.ckpt | **60.00** | 55.00 |" in board
    sheet = picture(rows)
    assert sheet.size == (600, 440 + 28)  # one protocol: one panel, and the legend


def test_a_folder_bench_is_recomputed_when_a_file_changes(models, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for split in ("train", "val"):
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    out = tmp_path / "bench"
    first = bench.bench(models[:1], str(root), "knn", out, progress=False, ks=[3], workers=0)
    assert first["computed"] == [(models[0], "knn")]
    assert values(first["rows"], models[0], "knn") == {"knn3_top1": 100.0}  # two flat colours: told apart
    assert first["rows"][0]["data"] == str(root.resolve())
    again = bench.bench(models[:1], str(root), "knn", out, progress=False, ks=[3], workers=0)
    assert again["reused"] == [(models[0], "knn")]

    Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(root / "val" / "red" / "0.png")  # one image replaced
    changed = bench.bench(models[:1], str(root), "knn", out, progress=False, ks=[3], workers=0)
    assert changed["computed"] == [(models[0], "knn")] and len(changed["rows"]) == 1
