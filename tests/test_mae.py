"""MAE: parity with facebookresearch/mae, optimizer groups, schedule, masking statistics."""
import math

import pytest
import torch

import mimzoo
from mimzoo.methods import MAE
from mimzoo.models import mae_masking
from mimzoo.optim import warmup_cosine, weight_decay_groups

from conftest import assert_close, load_io
from tiny import tiny


@pytest.mark.parametrize("variant", ["", "perturbed."])
def test_mae_pretrainer_parity(parity_dir, variant):
    d = parity_dir / "mae_pretrain"
    io = load_io(d)
    model = mimzoo.load(d / ("checkpoint_perturbed.pth" if variant else "checkpoint.pth"), model="pretrainer",
                        decoder_num_heads=4)
    assert isinstance(model, MAE)
    with torch.no_grad():
        out = model(io["images"], noise=io["noise"])
    assert torch.equal(out.mask, io["mask"])
    assert torch.equal(out.ids_restore.float(), io["ids_restore"])
    assert_close(out.latent, io[variant + "latent"], what="latent")
    assert_close(out.pred, io[variant + "pred"], what="pred")
    assert_close(out.loss, io[variant + "loss"], what="loss")
    if not variant:
        assert_close(out.decoder_normed, io["decoder_normed"], what="decoder_normed")
        assert model.hparams.norm_pix_loss


def test_encoder_only_checkpoint_has_no_pretrainer(parity_dir):
    with pytest.raises(ValueError, match="encoder only"):
        mimzoo.load(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth", model="pretrainer")


def test_masking_statistics():
    torch.manual_seed(0)
    noise = torch.rand(512, 196)
    ids_keep, mask, ids_restore = mae_masking(noise, 0.75)
    assert ids_keep.shape == (512, 49) and mask.sum(1).eq(147).all()
    # kept = smallest noise; every patch equally likely to be kept
    assert torch.equal(torch.gather(mask, 1, ids_keep), torch.zeros(512, 49))
    freq = 1 - mask.mean(0)
    assert abs(freq.mean().item() - 0.25) < 1e-6 and freq.std().item() < 0.05
    assert torch.equal(torch.gather(torch.argsort(noise, 1), 1, ids_restore), torch.arange(196).expand(512, -1))


def test_weight_decay_groups_follow_mae():
    model = tiny(MAE)
    no_decay, decay = weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert "backbone.blocks.0.norm1.weight" in nd and "backbone.blocks.0.attn.qkv.bias" in nd
    assert "backbone.blocks.0.attn.qkv.weight" in d and "decoder.pred.weight" in d
    # tokens are 3-D and decayed in MAE; the fixed sin-cos tables are frozen and not optimised at all
    assert "backbone.cls_token" in d and "decoder.mask_token" in d
    assert "backbone.pos_embed" not in nd | d and "decoder.pos_embed" not in nd | d
    assert len(nd) + len(d) == sum(p.requires_grad for p in model.parameters())


def test_warmup_cosine_by_hand():
    # 10 warmup steps of 110: 0 -> 1 linearly, then half a cosine down to min_ratio
    assert warmup_cosine(0, 10, 110) == 0.0
    assert warmup_cosine(5, 10, 110) == 0.5
    assert warmup_cosine(10, 10, 110) == 1.0
    assert math.isclose(warmup_cosine(60, 10, 110), 0.5)
    assert math.isclose(warmup_cosine(110, 10, 110, 0.1), 0.1)
    assert math.isclose(warmup_cosine(35, 10, 110, 0.0), 0.5 * (1 + math.cos(math.pi * 0.25)))
