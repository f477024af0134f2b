"""Loading by zoo name end to end, through real loopback servers: a Hub stand-in, a plain URL host and a
Google-Drive-like host; then offline from the cache; checksum mismatch; hf-hub: repos; unknown names."""
import hashlib

import huggingface_hub.constants
import pytest
import torch
import yaml

import mimzoo
from mimzoo.cli import main as cli
from mimzoo.download import ChecksumError, DownloadError, OfflineError
from mimzoo.zoo import UnknownModelError

from conftest import assert_close, load_io
from servers import FileServer, HubServer, server_down_url


def registry(tmp_path, monkeypatch, models):
    path = tmp_path / "extra.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setenv("MIMZOO_REGISTRY", str(path))


@pytest.fixture(scope="module")
def fixtures(parity_dir):
    return {name: (parity_dir / rel).read_bytes() for name, rel in {
        "mae": "mae_pretrain/checkpoint_released_encoder.pth",
        "croco2": "croco_v2/checkpoint.pth",
        "mimic": "mae_pretrain/mimic_multiview/checkpoint.pth",
    }.items()}


def test_by_name_from_url_then_offline(tmp_path, monkeypatch, fixtures, parity_dir):
    io = load_io(parity_dir / "mae_pretrain")
    with FileServer({"/mae/tiny.pth": fixtures["mae"]}) as host:
        registry(tmp_path, monkeypatch, {"tiny_mae": {
            "method": "mae", "format": "mae", "arch": "vit_tiny_patch16",
            "source": {"url": f"{host.url}/mae/tiny.pth"},
            "sha256": hashlib.sha256(fixtures["mae"]).hexdigest()}})
        vit = mimzoo.load("tiny_mae", progress=False)
        assert ("GET", "/mae/tiny.pth") in host.calls
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["latent_all_sorted"])
    # the server is gone: offline mode serves the verified cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = mimzoo.load("tiny_mae", progress=False)
    assert torch.equal(again.pos_embed, vit.pos_embed)


def test_offline_miss_says_what_to_download(tmp_path, monkeypatch):
    registry(tmp_path, monkeypatch, {"never_fetched": {
        "method": "mae", "format": "mae", "source": {"url": f"{server_down_url()}/x.pth"}}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="mimzoo download never_fetched"):
        mimzoo.load("never_fetched")


def test_checksum_mismatch_keeps_nothing(tmp_path, monkeypatch, fixtures):
    with FileServer({"/mae/tiny.pth": fixtures["mae"]}) as host:
        registry(tmp_path, monkeypatch, {"tampered": {
            "method": "mae", "format": "mae", "source": {"url": f"{host.url}/mae/tiny.pth"}, "sha256": "0" * 64}})
        with pytest.raises(ChecksumError, match="tampered"):
            mimzoo.load("tampered", progress=False)
    from mimzoo.download import cache_dir

    assert not [p for p in cache_dir().rglob("*") if p.is_file() and "lock" not in p.name]


def test_by_name_from_hub(tmp_path, monkeypatch, fixtures, parity_dir):
    io = load_io(parity_dir / "croco_v2")
    with HubServer({("naver/croco-tiny", "CroCo_tiny.pth"): fixtures["croco2"]}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        registry(tmp_path, monkeypatch, {"croco_tiny": {
            "method": "croco", "format": "croco", "num_heads": 3,
            "source": {"hf": {"repo": "naver/croco-tiny", "filename": "CroCo_tiny.pth", "revision": "main"}}}})
        vit = mimzoo.load("croco_tiny", progress=False)
        assert [c[0] for c in hub.calls if c[1].endswith("CroCo_tiny.pth")] == ["HEAD", "GET"]
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["feat1"])


def test_gdrive_large_file_and_alias(tmp_path, monkeypatch, fixtures, parity_dir):
    io = load_io(parity_dir / "mae_pretrain" / "mimic_multiview")
    with FileServer(gdrive={"mimicid": fixtures["mimic"]}, large={"mimicid"}) as host:
        monkeypatch.setenv("MIMZOO_GDRIVE_ENDPOINT", host.url)
        registry(tmp_path, monkeypatch, {
            "mimic_tiny": {"method": "mimic", "format": "mimic", "source": {"gdrive": {"id": "mimicid"}}},
            "croco_mimic_tiny": {"alias_of": "mimic_tiny"}})
        vit = mimzoo.load("croco_mimic_tiny", progress=False)
    with torch.no_grad():
        assert_close(vit.forward_features(io["images2"]), io["latent2"])


def test_hf_hub_repo_of_a_saved_backbone(tmp_path, monkeypatch, parity_dir):
    vit = mimzoo.load(parity_dir / "mim_refiner" / "d2v2_postnorm" / "checkpoint_perturbed.pth")
    vit.save_pretrained(tmp_path / "saved")
    files = {("acme/d2v2-tiny", f.name): f.read_bytes() for f in (tmp_path / "saved").iterdir()}
    x = torch.randn(1, 3, 224, 224)
    with HubServer(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        loaded = mimzoo.load("hf-hub:acme/d2v2-tiny@main")
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), vit.forward_features(x))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownModelError, match="mae_vit_base_patch16"):
        mimzoo.load("mae_vit_bsae_patch16")


def test_server_down_is_a_clear_error(tmp_path, monkeypatch):
    registry(tmp_path, monkeypatch, {"down": {"method": "mae", "format": "mae",
                                              "source": {"url": f"{server_down_url()}/x.pth"}}})
    with pytest.raises(DownloadError, match="unreachable"):
        mimzoo.load("down", progress=False)


def test_zoo_lists_every_family_and_resolves_aliases():
    names = mimzoo.list_models()
    for family in ("mae_vit_base_patch16", "mae_mimic3m", "croco_mimic3m", "croco_v2_vit_base_small_decoder"):
        assert family in names
    assert mimzoo.list_models("croco_v2*") and all(n.startswith("croco_v2") for n in mimzoo.list_models("croco_v2*"))
    from mimzoo.zoo import entry

    assert entry("croco_mimic3m")["name"] == "mae_mimic3m"
    for name in names:  # every entry resolves and names a converter we have
        e = entry(name)
        assert e["format"] in ("mae", "mimic", "croco", "siameseim", "mim_refiner"), name


def test_models_command_prints_the_zoo(capsys):
    assert cli(["models", "mae_*"]) == 0
    out = capsys.readouterr().out
    assert "mae_vit_huge_patch14" in out and "croco" not in out


def test_zoo_doc_is_generated_from_the_yaml(capsys):
    from pathlib import Path

    cli(["models", "--markdown"])
    doc = (Path(__file__).parents[1] / "docs" / "zoo.md").read_text()
    assert capsys.readouterr().out.strip() in doc, "docs/zoo.md is stale: regenerate with `mimzoo models --markdown`"


AXIS_VALUES = {"paradigm": {"reconstruction", "contrastive", "hybrid"},
               "masking": {"random", "block", "cross-view", "none"},
               "target": {"pixels", "normalised pixels", "HOG", "tokens", "features"},
               "architecture": {"encoder-decoder", "cross-view decoder", "two-stream proxies",
                                "heads on intermediate blocks"}}


def test_every_pretraining_method_has_the_surveys_axes_and_the_doc_shows_them(capsys):
    from pathlib import Path

    from mimzoo import zoo
    from mimzoo.methods import METHODS

    pretraining = set(METHODS) - {"finetune", "linear_probe", "dense_finetune"}
    taxonomy = zoo.taxonomy()
    assert pretraining <= set(taxonomy), pretraining - set(taxonomy)
    for method, t in taxonomy.items():
        for axis, allowed in AXIS_VALUES.items():
            assert t[axis] in allowed, (method, axis, t[axis])
        assert t["objective"] and t["downstream"]
    assert {e.get("method") for e in zoo.registry().values() if "alias_of" not in e} <= set(taxonomy)
    assert cli(["models", "--taxonomy", "--markdown"]) == 0
    doc = (Path(__file__).parents[1] / "docs" / "zoo.md").read_text()
    assert capsys.readouterr().out.strip() in doc, "docs/zoo.md is stale: `mimzoo models --taxonomy --markdown`"


def test_models_by_an_axis_groups_every_checkpoint_once(capsys):
    from mimzoo import zoo

    assert cli(["models", "--by", "paradigm"]) == 0
    out = capsys.readouterr().out
    assert "[paradigm: hybrid]" in out and "[paradigm: reconstruction]" in out
    listed = [line.split()[0] for line in out.splitlines() if line and line.split()[0] in zoo.registry()]
    assert sorted(listed) == sorted(zoo.list_models())
    hybrid = out.split("[paradigm: hybrid]")[1].split("[")[0]
    assert "siameseim_vit_base_patch16" in hybrid and "mae_vit_base_patch16 " not in hybrid
    assert cli(["models", "--by", "colour"]) == 2


def test_results_doc_is_generated_and_keeps_protocols_apart(capsys):
    from pathlib import Path

    from mimzoo import zoo

    assert cli(["models", "--results-doc"]) == 0
    doc = (Path(__file__).parents[1] / "docs" / "results.md").read_text()
    assert capsys.readouterr().out == doc, "docs/results.md is stale: `mimzoo models --results-doc > docs/results.md`"
    reported = [(n, m) for n, e in zoo.registry().items() if "alias_of" not in e for m in e.get("metrics") or []]
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| protocol")]
    assert len(rows) == len(reported)  # every reported number once, each on its own row with its protocol
    assert cli(["models", "--results", "imagenet-1k"]) == 0
    out = capsys.readouterr().out
    in1k = [(n, m) for n, m in reported if m["task"] == "imagenet-1k"]
    assert len(out.strip().splitlines()) == len(in1k) + 2
    # within one protocol and metric, best first
    table = [r for r in rows if "| top1 |" in r and "k-NN, k=10, T=0.07, last-block CLS, bf16 |" in r]
    values = [float(r.split(" | ")[2]) for r in table]
    assert values == sorted(values, reverse=True) and len(values) >= 2
    assert cli(["models", "--results", "no-such-task"]) == 1


def test_zoo_facts_fill_what_the_file_does_not_say(tmp_path, monkeypatch, parity_dir, caplog):
    """A `{'model': ...}` file records no training args; its zoo entry's `targets: pixel` makes the method train
    (and reconstruct) on raw pixels, `pooling: avg` makes the backbone pool patch tokens. An explicit argument wins."""
    from mimzoo.methods import MAE

    io = load_io(parity_dir / "mae_pretrain")
    data = (parity_dir / "mae_pretrain" / "checkpoint_perturbed.pth").read_bytes()
    entry = {"method": "mae", "format": "mae", "arch": "vit_tiny_patch16", "decoder": {"num_heads": 4},
             "sha256": hashlib.sha256(data).hexdigest()}
    with FileServer({"/mae/vis.pth": data}) as host:
        registry(tmp_path, monkeypatch, {
            "tiny_visualize": {**entry, "targets": "pixel", "pooling": "avg",
                               "source": {"url": f"{host.url}/mae/vis.pth"}},
            "tiny_full": {**entry, "targets": "norm_pix", "source": {"url": f"{host.url}/mae/vis.pth"}}})
        pixel = mimzoo.load("tiny_visualize", model="pretrainer", progress=False)
        normed = mimzoo.load("tiny_full", model="pretrainer", progress=False)
        started = MAE(weights="tiny_visualize")
        logger = __import__("logging").getLogger("mimzoo")
        monkeypatch.setattr(logger, "propagate", True)
        with caplog.at_level("INFO", logger="mimzoo"):
            explicit = MAE(weights="tiny_visualize", norm_pix_loss=True)
        vit = mimzoo.load("tiny_visualize", progress=False)
    assert pixel.norm_pix_loss is False and started.norm_pix_loss is False and started.hparams.norm_pix_loss is False
    assert normed.norm_pix_loss is True and explicit.norm_pix_loss is True
    assert "norm_pix_loss=True (the file was trained with False)" in caplog.text
    # raw-pixel MSE over the removed patches, written out: patches row-major, channel-last inside a patch
    x = io["images"]
    target = x.reshape(2, 3, 14, 16, 14, 16).permute(0, 2, 4, 3, 5, 1).reshape(2, 196, 768)
    with torch.no_grad():
        out = pixel(x, noise=io["noise"])
        expected = (((io["perturbed.pred"] - target) ** 2).mean(-1) * io["mask"]).sum() / io["mask"].sum()
        assert_close(out.loss, expected, what="raw-pixel loss")
        assert_close(normed(x, noise=io["noise"]).loss, io["perturbed.loss"], what="norm-pix loss")
        tokens = vit.forward_features(x)
        assert_close(vit(x), tokens[:, 1:].mean(1), what="avg pooling")
