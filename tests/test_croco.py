"""Cross-view completion: CroCo v1/v2 and MIMIC's multi-view MAE reproduce their official code's outputs."""
import pytest
import torch

import mimzoo
from mimzoo.methods import MIMIC, CroCo
from mimzoo.methods.croco import masking

from conftest import assert_close, load_io


@pytest.mark.parametrize("family", ["croco", "croco_v2"])
@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_croco_pretrainer_parity(parity_dir, family, variant):
    d = parity_dir / family
    io = load_io(d)
    model = mimzoo.load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"), model="pretrainer")
    assert isinstance(model, CroCo) and not isinstance(model, MIMIC)
    assert model.backbone.pos_embed_kind == ("sincos" if family == "croco" else "rope")
    with torch.no_grad():
        out = model(io["images"], io["images2"], noise=io["noise"])
        assert torch.equal(out.mask, io["mask"])
        assert_close(out.feat1, io[variant + "feat1_masked"], what="feat1_masked")
        assert_close(out.feat2, io[variant + "feat2"], what="feat2")
        assert_close(out.decoder_normed, io[variant + "decfeat"], what="decfeat")
        assert_close(out.pred, io[variant + "out"], what="out")
        assert_close(out.loss, io[variant + "loss"], what="loss")
        # binocular downstream path: view 1 unmasked, decoded against view 2
        dec = model.decoder(model.backbone.forward_features(io["images"]), out.feat2, return_all_blocks=True)
        assert_close(dec[-1], io[variant + "dec_unmasked"], what="dec_unmasked")
        if not variant:
            assert_close(dec[0], io["dec_unmasked_blocks.0"], what="dec_unmasked_blocks.0")


@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mimic_multiview_parity(parity_dir, variant):
    d = parity_dir / "mae_pretrain" / "mimic_multiview"
    io = load_io(d)
    model = mimzoo.load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"), model="pretrainer",
                        decoder_num_heads=4)
    assert isinstance(model, MIMIC)
    with torch.no_grad():
        out = model(io["images"], io["images2"], noise=io["noise"])
    assert torch.equal(out.mask, io["mask"]) and out.mask.sum(1).eq(177).all()  # MIMIC keeps 19, not 20
    assert_close(out.feat1, io[variant + "latent1"], what="latent1")
    assert_close(out.feat2, io[variant + "latent2"], what="latent2")
    assert_close(out.pred, io[variant + "pred"], what="pred")
    assert_close(out.loss, io[variant + "loss"], what="loss")
    if not variant:
        assert_close(out.decoder_normed, io["decoder_normed"], what="decoder_normed")


def test_masking_rules_differ_by_one_token():
    noise = torch.rand(3, 196)
    croco_keep, croco_mask, _ = masking(noise, 0.9, "croco")
    mae_keep, mae_mask, _ = masking(noise, 0.9, "mae")
    assert croco_keep.shape[1] == 20 and mae_keep.shape[1] == 19
    assert torch.equal(croco_keep, croco_keep.sort(1).values)  # CroCo: visible patches in patch order
    assert torch.equal(torch.gather(croco_mask, 1, croco_keep), torch.zeros(3, 20))


def test_dense_features_follow_croco_dpt_hooks(parity_dir):
    io = load_io(parity_dir / "croco")
    model = mimzoo.load(parity_dir / "croco" / "checkpoint.pth", model="pretrainer")
    with torch.no_grad():
        mono = model.dense_features(io["images"], hooks=[0, 1])
        assert_close(mono[0], io["feat1_blocks.0"], what="encoder block 0")
        assert_close(mono[1], io["feat1_blocks.1"], what="last encoder block, normed")
        bino = model.dense_features(io["images"], io["images2"], hooks=[1, 2])
        assert_close(bino[0], io["feat1_blocks.1"]) and assert_close(bino[1], io["dec_unmasked_blocks.0"])
        assert [t.shape for t in model.dense_features(io["images"])] == [(2, 196, 192)] * 4


def test_defaults_are_the_papers():
    v2 = CroCo(backbone="vit_tiny_patch16", backbone_kwargs={"depth": 1}, decoder_depth=1, decoder_embed_dim=64,
               decoder_num_heads=2)
    assert not v2.backbone.has_class_token and v2.backbone.pos_embed_kind == "rope" and v2.hparams.mask_ratio == 0.9
    assert (v2.optim.blr, v2.optim.warmup_epochs, v2.norm_pix_loss) == (1.5e-4, 40, True)
    mimic = MIMIC(backbone="vit_tiny_patch16", backbone_kwargs={"depth": 1}, decoder_depth=1, decoder_embed_dim=64,
                  decoder_num_heads=2)
    assert mimic.backbone.has_class_token and mimic.backbone.pos_embed_kind == "sincos"
    assert mimic.hparams.masking_rule == "mae" and mimic.optim.warmup_epochs == 20
    assert mimic.hparams.views == "mimic" and mimic.hparams.decoder_embed_dim == 64


@pytest.mark.parametrize("family", ["croco", "croco_v2"])
def test_croco_starts_from_either_version_with_weights(parity_dir, family):
    """`CroCo(weights=...)` takes the version from the file (v1: fixed cosine table, v2: RoPE) and continues from
    its encoder and decoder: the upstream loss, plain and perturbed."""
    io = load_io(parity_dir / family)
    for variant, name in (("", "checkpoint.pth"), ("perturbed.", "checkpoint_perturbed.pth")):
        model = CroCo(weights=str(parity_dir / family / name)).eval()
        assert model.backbone.pos_embed_kind == ("sincos" if family == "croco" else "rope")
        with torch.no_grad():
            assert_close(model(io["images"], io["images2"], noise=io["noise"]).loss, io[variant + "loss"])
