"""Weights the way users hold them: transformers ViTMAE folders, bare state dicts and Hub repos; timm Hub folders
and `hf-hub:timm/...`; the folder dispatcher's error. Each built in the test with that library, tiny and random."""
import json
from pathlib import Path

import pytest
import torch

import mimzoo
from mimzoo.folders import FolderLayoutError

from servers import HubServer

transformers = pytest.importorskip("transformers")


def tiny_vitmae(norm_pix_loss: bool = False, mask_ratio: float = 0.75, seed: int = 0):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(seed)
    config = ViTMAEConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                          image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=2,
                          decoder_num_attention_heads=2, decoder_intermediate_size=64, mask_ratio=mask_ratio,
                          norm_pix_loss=norm_pix_loss)
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # transformers inits LayerNorms at 1 / 0: perturb so that every weight matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("norm_pix_loss, mask_ratio", [(False, 0.75), (True, 0.5)])
def test_transformers_vitmae_folder_reproduces_transformers(tmp_path, norm_pix_loss, mask_ratio):
    """Encoder features, decoder logits, mask and loss for the same `noise`, as backbone and as pretrainer; the
    config's layer_norm_eps, norm_pix_loss and mask_ratio are honoured."""
    from transformers import ViTMAEModel

    hf = tiny_vitmae(norm_pix_loss, mask_ratio)
    hf.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    pre = mimzoo.load(tmp_path / "hf", model="pretrainer")
    vit = mimzoo.load(tmp_path / "hf")
    encoder = ViTMAEModel.from_pretrained(tmp_path / "hf").eval()
    assert (pre.hparams.mask_ratio, pre.norm_pix_loss, vit.norm.eps) == (mask_ratio, norm_pix_loss, 1e-12)
    assert pre.decoder.norm.eps == 1e-12
    with torch.no_grad():
        ref, out = hf(pixel_values=x, noise=noise), pre(x, noise)
        keep = noise.argsort(1)[:, : int(16 * (1 - mask_ratio))]
        features = vit.forward_features(x, keep)
        expected = encoder(pixel_values=x, noise=noise).last_hidden_state
    torch.testing.assert_close(out.pred, ref.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=0)
    assert torch.equal(out.mask, ref.mask)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_transformers_state_dicts_in_every_naming(tmp_path):
    """The in-memory names of transformers 5, a bare pytorch_model.bin (no config: transformers' default eps,
    heads as a hint) and ViTMAEModel's un-prefixed keys all give the same backbone."""
    from transformers import ViTMAEModel

    hf = tiny_vitmae()
    hf.save_pretrained(tmp_path / "hf")
    reference = mimzoo.load(tmp_path / "hf")
    torch.save(hf.state_dict(), tmp_path / "v5_names.bin")  # vit.layers.N.attention.q_proj, ...
    hf.vit.save_pretrained(tmp_path / "encoder")  # a ViTMAEModel folder
    encoder_only = ViTMAEModel.from_pretrained(tmp_path / "encoder")
    torch.save(encoder_only.state_dict(), tmp_path / "encoder.bin")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = reference.forward_features(x)
        for source in (tmp_path / "v5_names.bin", tmp_path / "encoder", tmp_path / "encoder.bin"):
            vit = mimzoo.load(source, num_heads=3)
            assert vit.norm.eps == 1e-12, source
            torch.testing.assert_close(vit.forward_features(x), want, atol=1e-6, rtol=0, msg=str(source))
    with pytest.raises(mimzoo.errors.Error, match="holds the encoder only"):
        mimzoo.load(tmp_path / "encoder", model="pretrainer")


def test_hub_repos_of_transformers_and_timm(tmp_path, monkeypatch):
    """`hf-hub:facebook/...` with pytorch_model.bin only (older uploads), `hf-hub:timm/...`, and a bare repo id
    through Method.from_pretrained."""
    import timm
    from timm.models import save_for_hf

    from mimzoo.methods import MAE

    hf = tiny_vitmae()
    hf.save_pretrained(tmp_path / "hf")
    # older uploads (facebook/vit-mae-*) hold pytorch_model.bin only; transformers 5 writes safetensors only
    from safetensors.torch import load_file

    torch.save(load_file(tmp_path / "hf" / "model.safetensors"), tmp_path / "hf" / "pytorch_model.bin")
    (tmp_path / "hf" / "model.safetensors").unlink()
    torch.manual_seed(0)
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, img_size=64).eval()
    save_for_hf(tm, tmp_path / "timm", model_args={"depth": 2, "img_size": 64}, safe_serialization=True)
    files = {("facebook/vit-mae-tiny", f.name): f.read_bytes() for f in (tmp_path / "hf").iterdir()}
    files.update({("timm/vit_tiny_test.mae", f.name): f.read_bytes() for f in (tmp_path / "timm").iterdir()})
    x32, x64 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 64, 64)
    monkeypatch.setenv("MIMZOO_CACHE", str(tmp_path / "cache"))
    with HubServer(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        vit = mimzoo.load("hf-hub:facebook/vit-mae-tiny", cache_dir=str(tmp_path / "cache"))
        timm_vit = mimzoo.load("hf-hub:timm/vit_tiny_test.mae", cache_dir=str(tmp_path / "cache"))
        pre = MAE.from_pretrained("facebook/vit-mae-tiny")
        asked = [path for method, path in hub.calls if method == "GET"]
    assert any(p.endswith("/pytorch_model.bin") for p in asked)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x32), mimzoo.load(tmp_path / "hf").forward_features(x32))
        torch.testing.assert_close(timm_vit.forward_features(x64), tm.forward_features(x64), atol=1e-6, rtol=0)
        assert torch.equal(pre.backbone.pos_embed, vit.pos_embed)


def test_timm_hub_folder_gives_timms_features_and_data_config(tmp_path):
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, global_pool="avg", depth=2,
                           img_size=48, reg_tokens=2, pretrained_cfg_overlay={"mean": (0.5, 0.4, 0.3),
                                                                             "std": (0.2, 0.25, 0.3),
                                                                             "crop_pct": 0.95}).eval()
    save_for_hf(tm, tmp_path / "timm", model_args={"depth": 2, "img_size": 48, "reg_tokens": 2, "num_classes": 5,
                                                   "global_pool": "avg"})
    vit = mimzoo.load(tmp_path / "timm")
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), tm(x), atol=1e-6, rtol=0)
    assert vit.data_config["mean"] == (0.5, 0.4, 0.3) and vit.data_config["std"] == (0.2, 0.25, 0.3)
    assert vit.data_config["crop_pct"] == 0.95 and vit.data_config["input_size"] == (3, 48, 48)
    assert vit.num_prefix_tokens == 3 and vit.num_classes == 5


def test_a_folder_of_no_known_layout_says_what_it_found(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"hidden": 3, "kind": "mystery"}))
    (tmp_path / "odd" / "weights.npz").write_bytes(b"x")
    with pytest.raises(FolderLayoutError) as e:
        mimzoo.load(tmp_path / "odd")
    said = str(e.value)
    assert "weights.npz" in said and "hidden, kind" in said and "timm Hub" in said and "transformers" in said
    from mimzoo.cli import main

    assert main(["probe", "knn", "--model", str(tmp_path / "odd"), "--data", "digits"]) == 2


# -- back out: mimzoo export --to timm|transformers, model cards -------------------------------------------------
def test_export_to_transformers_loads_with_equal_outputs(tmp_path, capsys):
    """A transformers MAE read by mimzoo and exported back is the same model: logits, loss and features."""
    from transformers import ViTMAEForPreTraining

    from mimzoo.cli import main

    hf = tiny_vitmae(norm_pix_loss=True, mask_ratio=0.6)
    hf.save_pretrained(tmp_path / "hf")
    pre = mimzoo.load(tmp_path / "hf", model="pretrainer")
    pre.save_pretrained(tmp_path / "mz")  # through mimzoo's own folder on the way
    assert main(["export", str(tmp_path / "mz"), "--to", "transformers", str(tmp_path / "out")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    back = ViTMAEForPreTraining.from_pretrained(tmp_path / "out").eval()
    assert (back.config.mask_ratio, back.config.norm_pix_loss, back.config.layer_norm_eps) == (0.6, True, 1e-12)
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        want, got = hf(pixel_values=x, noise=noise), back(pixel_values=x, noise=noise)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=0)
    prep = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert prep["image_mean"] == list(pre.backbone.data_config["mean"]) and prep["size"]["height"] == 32


def test_export_to_timm_loads_with_equal_features_and_preprocessing(tmp_path, parity_dir):
    import timm

    src = parity_dir / "mae_pretrain/checkpoint_released_encoder.pth"
    from mimzoo.export import export

    out = export(str(src), "timm", tmp_path / "timm")
    vit = mimzoo.load(src)
    config = json.loads((out / "config.json").read_text())
    by_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_file = timm.create_model(config["architecture"], pretrained=True, **config["model_args"],
                                pretrained_cfg_overlay={"file": str(out / "model.safetensors")}).eval()
    size = vit.data_config["input_size"]
    x = torch.randn(2, *size)
    with torch.no_grad():
        for model in (by_dir, by_file):
            torch.testing.assert_close(model.forward_features(x), vit.forward_features(x), atol=1e-6, rtol=0)
    data = timm.data.resolve_data_config({}, model=by_dir)
    assert tuple(data["mean"]) == tuple(vit.data_config["mean"]) and tuple(data["input_size"]) == tuple(size)
    # and mimzoo reads its own export back as a timm folder
    with torch.no_grad():
        torch.testing.assert_close(mimzoo.load(out).forward_features(x), vit.forward_features(x), atol=0, rtol=0)


def test_export_refuses_what_the_target_cannot_hold(tmp_path, capsys):
    from mimzoo.cli import main
    from mimzoo.models import ViT

    ViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, pos_embed="rope",
        class_token=False).save_pretrained(tmp_path / "rope")
    assert main(["export", str(tmp_path / "rope"), "--to", "timm", str(tmp_path / "out")]) == 2
    assert main(["export", str(tmp_path / "rope"), "--to", "transformers", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "RoPE" in err[0] and "needs a cls token" in err[1], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_model_cards_carry_licence_source_and_reported_metrics(tmp_path, monkeypatch, parity_dir):
    """A zoo checkpoint's licence (non-commercial, in words), paper, repo and reported metrics reach the
    README.md of every folder written from it: save_pretrained, a method's save_pretrained, convert, export."""
    import yaml
    from huggingface_hub import ModelCard

    from mimzoo.cli import main
    from mimzoo.methods import MAE

    from servers import FileServer

    weights = (parity_dir / "mae_pretrain/checkpoint.pth").read_bytes()  # a tiny MAE with its decoder
    entry = dict(mimzoo.zoo.entry("mae_vit_base_patch16"))
    with FileServer({"/full.pth": weights}) as host:
        registry = tmp_path / "extra.yaml"
        entry.update(source={"url": f"{host.url}/full.pth"}, sha256=None, num_heads=3,
                     decoder={"num_heads": 4})
        entry.pop("name")
        registry.write_text(yaml.safe_dump({"models": {"mae_vit_base_patch16": entry}}))
        monkeypatch.setenv("MIMZOO_REGISTRY", str(registry))
        mimzoo.load("mae_vit_base_patch16", progress=False).save_pretrained(tmp_path / "vit")
        MAE(weights="mae_vit_base_patch16").save_pretrained(tmp_path / "mae")
        assert main(["convert", "mae_vit_base_patch16", str(tmp_path / "converted")]) == 0
        assert main(["export", "mae_vit_base_patch16", "--to", "timm", str(tmp_path / "timm")]) == 0
    reported = entry["metrics"][0]
    for folder in ("vit", "mae", "converted", "timm"):
        card = ModelCard.load(tmp_path / folder / "README.md")
        assert card.data.license == "cc-by-nc-4.0", folder
        assert "Non-commercial use only" in card.text and "facebookresearch/mae" in card.text, folder
        assert "2111.06377" in card.text and str(reported["value"]) in card.text and reported["protocol"] in card.text
    assert ModelCard.load(tmp_path / "timm" / "README.md").data.library_name == "timm"
    # the provenance travels: a folder loaded and saved again still knows its licence
    mimzoo.load(tmp_path / "vit").save_pretrained(tmp_path / "again")
    assert ModelCard.load(tmp_path / "again" / "README.md").data.license == "cc-by-nc-4.0"


def test_weights_of_unknown_origin_say_so():
    from mimzoo.cards import model_card, provenance

    card = model_card(provenance({"format": "mae"}), what="x")
    assert card.data.license is None and "Licence: unknown" in card.text


def test_push_to_hub_uploads_the_model_card(monkeypatch):
    """What push_to_hub hands to the Hub client (its network calls replaced: no Hub here) holds the card."""
    from types import SimpleNamespace

    import huggingface_hub

    from mimzoo.methods import MAE
    from mimzoo.models import ViT

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded[repo_id] = {p.name: p.read_text() for p in Path(folder_path).iterdir() if p.suffix in (".md",
                                                                                                      ".json")}
        return "https://hub.invalid/commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    ViT(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3).push_to_hub("me/vit")
    MAE(backbone={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 1, "num_heads": 3},
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2).push_to_hub("me/mae")
    for repo in ("me/vit", "me/mae"):
        assert "Licence: unknown" in uploaded[repo]["README.md"] and "config.json" in uploaded[repo], repo
    assert "MAE.from_pretrained" in uploaded["me/mae"]["README.md"]
