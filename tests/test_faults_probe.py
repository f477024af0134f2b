"""Probe inputs that used to give a wrong number with no sign, or a traceback: feature caches of another model or
dataset (reused), damaged caches (crash), one-class data (100 %), k or shots beyond the data (silent clamp or
crash), batches emptied by unreadable images (crash), settings that train or vote nothing."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from mimzoo.checkpoint import write_safetensors
from mimzoo.cli import main as cli
from mimzoo.errors import ConfigError
from mimzoo.models import create_vit
from mimzoo.tasks import extract, fewshot_on_features, knn_predict, linear_probe_on_features, probe

from tiny import TINY_VIT


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return create_vit("vit_tiny_patch16", **TINY_VIT).eval()


@pytest.fixture
def log(caplog, monkeypatch):
    """The "mimzoo" logger's lines (it does not propagate unless the application configured logging)."""
    monkeypatch.setattr(logging.getLogger("mimzoo"), "propagate", True)
    caplog.set_level(logging.INFO, logger="mimzoo")
    return caplog


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mimzoo")]


def image_folder(root, spec: dict[str, dict[str, int]], seed: int = 0):
    """root/<split>/<class>/<i>.png: small images, each class with its own dominant colour channel."""
    rng = np.random.default_rng(seed)
    for split, classes in spec.items():
        for channel, (name, n) in enumerate(classes.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (20, 24, 3), dtype=np.uint8)
                pixels[..., channel % 3] += 170
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


# 1. caches that know what they hold

def test_cache_of_another_model_is_not_reused(tmp_path, log):
    a, b = tiny_vit(0), tiny_vit(1)
    cache = str(tmp_path / "cache")
    first = probe.feature_sets(a, "digits", ["cls"], cache_dir=cache, progress=False)["cls"]
    got = probe.feature_sets(b, "digits", ["cls"], cache_dir=cache, progress=False)["cls"]
    fresh = probe.feature_sets(b, "digits", ["cls"], progress=False)["cls"]
    assert torch.equal(got[0], fresh[0]) and torch.equal(got[2], fresh[2])  # b's own features, not a's
    assert not torch.allclose(got[0], first[0])
    said = [m for m in lines(log) if "not reusing" in m]
    assert len(said) == 2 and all("different model" in m for m in said)  # train and test, one line each
    # both models' features stay cached side by side and each reads back its own
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    again_a = probe.feature_sets(a, "digits", ["cls"], cache_dir=cache, progress=False)["cls"]
    again_b = probe.feature_sets(b, "digits", ["cls"], cache_dir=cache, progress=False)["cls"]
    assert all(torch.equal(x, y) for x, y in zip(again_a, first))
    assert all(torch.equal(x, y) for x, y in zip(again_b, got))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == stamps  # nothing rewritten


def test_cache_of_other_data_is_not_reused(tmp_path, log):
    """The same model and pooling on digits, on a folder, then on that folder with an image added: the names
    <split>_<pooling>.safetensors are the same, the features are each data's own."""
    vit, cache = tiny_vit(), str(tmp_path / "cache")
    digits = probe.feature_sets(vit, "digits", ["avg"], cache_dir=cache, progress=False)["avg"]
    data = image_folder(tmp_path / "data", {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    folder = probe.feature_sets(vit, str(data), ["avg"], workers=0, cache_dir=cache, progress=False)["avg"]
    assert len(digits[0]) == 1200 and [len(t) for t in folder] == [6, 6, 4, 4]
    assert any("not reusing" in m and "different data dataset" in m for m in lines(log))
    image_folder(tmp_path / "more", {"train": {"a": 1}}, seed=5)
    (tmp_path / "more" / "train" / "a" / "0.png").rename(data / "train" / "a" / "9.png")
    log.clear()
    grown = probe.feature_sets(vit, str(data), ["avg"], workers=0, cache_dir=cache, progress=False)["avg"]
    assert [len(t) for t in grown] == [7, 7, 4, 4]
    assert any("data files" in m and "data samples" in m for m in lines(log))
    with safe_open(str(tmp_path / "cache" / "train_avg.safetensors"), "pt") as f:  # the key is in the metadata
        key = json.loads(f.metadata()["mimzoo_features_key"])
    assert key["pooling"] == "avg" and key["data"] == {"dataset": "digits", "split": "train", "samples": [0, 1200],
                                                       "size": 32, "transform": "nearest upsampling"}


def test_cache_without_a_key_or_damaged_is_recomputed(tmp_path, log):
    vit = tiny_vit()
    batches = [{"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator()
                                       .manual_seed(i)), "label": torch.tensor([0, 1, 0, 1])} for i in range(2)]
    want = extract(vit, batches, "cls", progress=False)
    path = tmp_path / "feats.safetensors"
    # a file as earlier versions wrote it: no record of what made it
    write_safetensors({"features": torch.zeros(8, 192), "labels": torch.zeros(8, dtype=torch.long)}, path)
    got = extract(vit, batches, "cls", cache=path, progress=False)
    assert torch.equal(got[0], want[0])
    assert any("no record of the model and data" in m for m in lines(log))
    # a truncated file (an interrupted copy) is extracted again, not a crash
    ours = next(p for p in tmp_path.iterdir() if p != path)
    ours.write_bytes(ours.read_bytes()[:-100])
    log.clear()
    got = extract(vit, batches, "cls", cache=path, progress=False)
    assert torch.equal(got[0], want[0]) and any("unreadable" in m for m in lines(log))
    assert torch.equal(extract(vit, batches, "cls", cache=path, progress=False)[0], want[0])
    # the same model on other images (described by `data`): extracted, not read back
    other = [{"image": 255 - b["image"], "label": b["label"]} for b in batches]
    extract(vit, batches, "cls", cache=tmp_path / "described.safetensors", progress=False, data="random")
    log.clear()
    got = extract(vit, other, "cls", cache=tmp_path / "described.safetensors", progress=False, data="inverted")
    assert torch.equal(got[0], extract(vit, other, "cls", progress=False)[0]) and not torch.equal(got[0], want[0])
    assert any("different data" in m for m in lines(log))


# 2. one-class data, and test splits without some classes

def test_one_class_folder_is_refused(tmp_path, capsys):
    data = image_folder(tmp_path / "one", {"train": {"cat": 4}, "val": {"cat": 2}})
    vit = tiny_vit()
    for run in (lambda: probe.knn_probe(vit, str(data), ks=(3,), workers=0, progress=False),
                lambda: probe.linear_probe(vit, str(data), epochs=2, workers=0, progress=False),
                lambda: probe.fewshot_probe(vit, str(data), shots=(1,), seeds=(0,), workers=0, progress=False)):
        with pytest.raises(ConfigError, match="at least two classes") as e:
            run()
        assert str(data) in str(e.value) and "'cat'" in str(e.value)
    vit.save_pretrained(tmp_path / "model")
    assert cli(["probe", "knn", "--model", str(tmp_path / "model"), "--data", str(data), "--k", "3", "--quiet",
                "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least two classes" in err and len(err.splitlines()) == 1
    # on features: the same refusal
    x = torch.randn(6, 8)
    one = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ConfigError, match="at least two classes"):
        linear_probe_on_features(x, one, x, one, epochs=1)
    with pytest.raises(ConfigError, match="at least two classes"):
        fewshot_on_features(x, one, x, one, shots=(1,), seeds=(0,))


def test_missing_classes_between_splits(tmp_path, log):
    data = image_folder(tmp_path / "data", {"train": {"a": 3, "b": 3}, "val": {"a": 2}})
    probe.knn_probe(tiny_vit(), str(data), ks=(3,), workers=0, progress=False)
    assert any("test split lacks 1 of the 2 training classes ('b')" in m for m in lines(log))
    x, y = torch.randn(12, 8), torch.arange(12) % 3
    with pytest.raises(ConfigError, match="never occur in the training split"):  # class 2 can never be right
        linear_probe_on_features(x[y < 2], y[y < 2], x, y, epochs=1)


# 3. k and shots beyond the data

def test_knn_k_beyond_the_training_set_is_clamped_and_said(log):
    g = torch.Generator().manual_seed(0)
    xtr, ytr, xte = torch.randn(10, 8, generator=g), torch.arange(10) % 2, torch.randn(5, 8, generator=g)
    assert torch.equal(knn_predict(xtr, ytr, xte, k=50), knn_predict(xtr, ytr, xte, k=10))
    assert any("k=50 is more than the 10 training samples; using k=10" in m for m in lines(log))
    for k in (0, -3):  # used to vote nothing and predict class 0 for everything
        with pytest.raises(ConfigError, match="positive integer"):
            knn_predict(xtr, ytr, xte, k=k)
    with pytest.raises(ConfigError, match="temperature must be positive"):
        knn_predict(xtr, ytr, xte, k=3, temperature=0)


def test_fewshot_shots_beyond_or_below_the_data(log):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(14, 8, generator=g), torch.tensor([0] * 4 + [1] * 10)
    for shots, seeds in (((0,), (0,)), ((-1,), (0,)), ((1,), ())):  # a ZeroDivisionError, a "-1-shot" 100 %
        with pytest.raises(ConfigError, match="few-shot"):
            fewshot_on_features(x, y, x, y, shots=shots, seeds=seeds)
    # more shots than the smallest class: an error (a clamped "5-shot" would be a 4-shot result), saying the most
    with pytest.raises(ConfigError, match=r"5-shot needs 5 .* class 0 has 4: use shots <= 4"):
        fewshot_on_features(x, y, x, y, shots=(5,), seeds=(0,))


def test_linear_probe_settings_beyond_the_data(log):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 8, generator=g), torch.arange(12) % 3
    out = linear_probe_on_features(x, y, x, y, epochs=2, batch_size=256)
    assert out["batch_size"] == 12
    said = lines(log)
    assert any("probe batch size 256 is more than the 12 training samples; using 12" in m for m in said)
    assert any("top-5 accuracy over 3 classes" in m for m in said)
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):  # trained nothing, reported it
        linear_probe_on_features(x, y, x, y, epochs=0)
    with pytest.raises(ConfigError, match="batch size must be a positive integer"):  # ZeroDivisionError
        linear_probe_on_features(x, y, x, y, epochs=1, batch_size=0)


# 4. other inputs

def test_batches_emptied_by_unreadable_images_are_skipped(tmp_path, log):
    data = image_folder(tmp_path / "data", {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}})
    for f in (data / "val" / "a").iterdir():  # the first val batch of 2: nothing left to stack
        f.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipping"):
        xtr, ytr, xte, yte = probe.frozen_features(tiny_vit(), str(data), "cls", batch_size=2, workers=0,
                                                   progress=False)
    assert len(xtr) == 6 and len(xte) == 2 and yte.tolist() == [1, 1]
    assert any("skipped 2 unreadable image(s)" in m for m in lines(log))
    for f in (data / "val" / "b").iterdir():
        f.write_bytes(b"not an image")
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="no readable image"):
        probe.frozen_features(tiny_vit(), str(data), "cls", batch_size=2, workers=0, progress=False)


def test_extraction_settings_that_cannot_work():
    vit = tiny_vit()
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):  # range() arg 3 / DataLoader
        probe.knn_probe(vit, "digits", ks=(3,), batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="workers"):
        probe.knn_probe(vit, "digits", ks=(3,), workers=-1, progress=False)
    with pytest.raises(ConfigError, match="k-NN needs at least one k"):  # printed an empty result
        probe.knn_probe(vit, "digits", ks=(), progress=False)
