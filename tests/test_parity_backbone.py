"""mimzoo.load on every upstream fixture checkpoint reproduces the backbone tensors the upstream code computed."""
import pytest
import torch

import mimzoo
from mimzoo.models import mae_masking, visible_ids

from conftest import assert_close, load_io


def blocks_out(vit, x, ids_keep=None):
    """Raw output of every block, prefix tokens included (what the fixtures hooked)."""
    outs = vit.forward_intermediates(x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True,
                                     ids_keep=ids_keep)
    return [torch.cat([p, t], 1) if vit.num_prefix_tokens else t
            for t, p in (o if isinstance(o, tuple) else (o, None) for o in outs)]


def load(path, **kw):
    return mimzoo.load(path, **kw)


@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mae_pretrain(parity_dir, variant):
    d = parity_dir / "mae_pretrain"
    io = load_io(d)
    vit = load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"))
    assert vit.pos_embed_kind == "sincos" and not vit.pos_embed.requires_grad
    x, noise = io["images"], io["noise"]
    with torch.no_grad():
        ids_keep, mask, ids_restore = mae_masking(noise, 0.75)
        assert torch.equal(mask, io["mask"]) and torch.equal(ids_restore.float(), io["ids_restore"])
        assert_close(vit.forward_features(x), io[variant + "latent_all_sorted"], what="latent_all_sorted")
        assert_close(vit.forward_features(x, ids_keep), io[variant + "latent"], what="latent")
        assert_close(vit.forward_features(x, torch.argsort(noise, 1)), io[variant + "latent_all"], what="latent_all")
        if not variant:
            for i, out in enumerate(blocks_out(vit, x)):
                assert_close(out, io[f"enc_blocks.{i}"], what=f"enc_blocks.{i}")


def test_mae_released_encoder(parity_dir):
    d = parity_dir / "mae_pretrain"
    io = load_io(d)
    vit = load(d / "checkpoint_released_encoder.pth")
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["latent_all_sorted"], what="released encoder")
        assert_close(vit(io["images"]), io["latent_all_sorted"][:, 0], what="cls feature")


@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mae_finetuned(parity_dir, variant):
    d = parity_dir / "mae_vit"
    io = load_io(d)
    vit = load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"))
    x = io["images"]
    with torch.no_grad():
        feats = vit.forward_features(x)
        assert_close(vit.forward_head(feats, pre_logits=True), io[variant + "features"], what="features")
        assert_close(vit(x), io[variant + "logits"], what="logits")
        for i, out in enumerate(blocks_out(vit, x)):
            assert_close(out, io[f"{variant}blocks.{i}"], what=f"blocks.{i}")
    headless = load(d / "checkpoint.pth", num_classes=0)
    assert headless(x).shape == (2, 192)


@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mimic_multiview(parity_dir, variant):
    d = parity_dir / "mae_pretrain" / "mimic_multiview"
    io = load_io(d)
    vit = load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"))
    with torch.no_grad():
        ids_keep, mask, _ = mae_masking(io["noise"], 0.9)
        assert ids_keep.shape[1] == 19 and torch.equal(mask, io["mask"])  # MIMIC's rounding, not CroCo's 20
        assert_close(vit.forward_features(io["images"], ids_keep), io[variant + "latent1"], what="latent1")
        assert_close(vit.forward_features(io["images2"]), io[variant + "latent2"], what="latent2")


@pytest.mark.parametrize("family", ["croco", "croco_v2"])
@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_croco(parity_dir, family, variant):
    d = parity_dir / family
    io = load_io(d)
    vit = load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"))
    assert vit.pos_embed_kind == ("sincos" if family == "croco" else "rope")
    x1, x2 = io["images"], io["images2"]
    with torch.no_grad():
        assert_close(vit.forward_features(x1), io[variant + "feat1"], what="feat1")
        assert_close(vit.forward_features(x2), io[variant + "feat2"], what="feat2")
        ids = visible_ids(io["mask"], num_visible=20)
        assert_close(vit.forward_features(x1, ids), io[variant + "feat1_masked"], what="feat1_masked")
        if not variant:
            raw = blocks_out(vit, x1)
            assert_close(raw[0], io["feat1_blocks.0"], what="feat1_blocks.0")
            assert_close(vit.norm(raw[1]), io["feat1_blocks.1"], what="feat1_blocks.1")


def test_siameseim(parity_dir):
    d = parity_dir / "siameseim"
    io = load_io(d)
    vit = load(d / "checkpoint.pth", num_heads=3)  # 96 wide: the head count is not in the weights
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["features"], what="features")
        assert_close(vit.forward_features(io["images2"]), io["features_view2"], what="features_view2")
        assert_close(vit(io["images"]), io["features_pooled"], what="features_pooled")
        ids = visible_ids(io["mask"].flatten(1), num_visible=196 - 118)
        assert_close(vit.forward_features(io["images"], ids), io["online_encoder_out"], what="online encoder")


@pytest.mark.parametrize("sub", ["", "d2v2_postnorm"])
@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mim_refiner(parity_dir, sub, variant):
    d = parity_dir / "mim_refiner" / sub if sub else parity_dir / "mim_refiner"
    io = load_io(d)
    vit = load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"))
    assert vit.no_embed_class and (vit.blocks[0].__class__.__name__ == ("PostNormBlock" if sub else "Block"))
    x = io["images"]
    with torch.no_grad():
        feats = vit.forward_features(x)
        assert_close(feats, io[variant + "features"], what="features")
        assert_close(vit(x), io[variant + "cls"], what="cls")
        assert_close(feats[:, 1:].mean(1), io[variant + "avg"], what="avg")
        assert_close(vit.embed(x)[0], io[variant + "tokens_in"], what="tokens_in")
        raw = blocks_out(vit, x)
        for i, out in enumerate(raw):
            assert_close(out, io[f"{variant}block_outputs.{i}"], what=f"block_outputs.{i}")
        assert_close(raw[-1][:, 0], io[variant + "cls_prenorm"], what="cls_prenorm")
        assert_close(raw[-1][:, 1:].mean(1), io[variant + "avg_prenorm"], what="avg_prenorm")


def test_data2vec2_fairseq_layout(parity_dir, tmp_path):
    """A fairseq data2vec 2.0 `model` state dict (MIM-Refiner's source for D2V2-refined) converts into the same
    post-norm encoder: the d2v2 fixture's weights written back in fairseq's names, with the decoder and the EMA
    teacher that the file also holds, give upstream's features."""
    from mimzoo.convert.data2vec2 import TO_REFINER

    d = parity_dir / "mim_refiner" / "d2v2_postnorm"
    sd = torch.load(d / "checkpoint_perturbed.pth", weights_only=True)["state_dict"]
    back = {ours: fs for fs, ours in TO_REFINER.items()}
    model = {back.get(k, k): v for k, v in sd.items()}
    positions = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
    model[positions] = model[positions].reshape(1, -1, model[positions].shape[-1])
    model["modality_encoders.IMAGE.decoder.blocks.0.0.weight"] = torch.zeros(4, 4)
    model["_ema"] = torch.zeros(3)
    torch.save({"model": model, "optimizer_history": [], "extra_state": {}}, tmp_path / "large_imagenet.pt")
    vit = load(tmp_path / "large_imagenet.pt")
    io = load_io(d)
    assert vit.blocks[0].__class__.__name__ == "PostNormBlock" and vit.norm_pre.weight.shape == (192,)
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["perturbed.features"], what="features")
