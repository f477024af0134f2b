"""Fault matrix, models: no silent deviation from what was asked or what the file holds. Overrides of a pretrainer
are applied or refused, a file without its final norm is missing keys, NaN weights are named, and an input size
the patches cannot tile is an error."""
import pytest
import torch

import mimzoo
from mimzoo.checkpoint import IncompatibleWeightsError
from mimzoo.errors import ConfigError
from mimzoo.models import ViT
from mimzoo.models.pos_embed import sincos_2d

ENCODER = "mae_pretrain/checkpoint_released_encoder.pth"
PRETRAINER = "mae_pretrain/checkpoint.pth"


def edited(parity_dir, tmp_path, edit):
    obj = torch.load(parity_dir / ENCODER, map_location="cpu", weights_only=True)
    edit(obj["model"])
    path = tmp_path / "edited.pth"
    torch.save(obj, path)
    return path


def test_pretrainer_applies_img_size_to_the_backbone_the_decoder_and_the_views(parity_dir):
    mae = mimzoo.load(parity_dir / PRETRAINER, model="pretrainer", img_size=64)
    assert mae.backbone.patch_embed.img_size == (64, 64) and mae.views.size == 64
    expected = sincos_2d(mae.decoder.pos_embed.shape[-1], (4, 4), 1)
    assert torch.allclose(mae.decoder.pos_embed, expected)
    with torch.no_grad():
        out = mae(torch.rand(2, 3, 64, 64), noise=torch.rand(2, 16))
    assert out.pred.shape[:2] == (2, 16) and torch.isfinite(out.loss)


def test_pretrainer_applies_drop_path_and_refuses_num_classes(parity_dir):
    mae = mimzoo.load(parity_dir / PRETRAINER, model="pretrainer", drop_path_rate=0.2)
    assert mae.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="MAE has no classifier, so num_classes does not apply"):
        mimzoo.load(parity_dir / PRETRAINER, model="pretrainer", num_classes=10)


def test_a_file_without_its_final_norm_is_a_missing_key_error(parity_dir, tmp_path):
    path = edited(parity_dir, tmp_path, lambda sd: [sd.pop("norm.weight"), sd.pop("norm.bias")])
    with pytest.raises(IncompatibleWeightsError, match="missing keys.*norm.weight"):
        mimzoo.load(path)


def test_non_finite_weights_are_an_error_naming_the_tensors(parity_dir, tmp_path):
    def poison(sd):
        sd["blocks.1.attn.qkv.weight"][0, 0] = float("nan")
        sd["norm.bias"][3] = float("inf")

    path = edited(parity_dir, tmp_path, poison)
    with pytest.raises(IncompatibleWeightsError, match="non-finite") as err:
        mimzoo.load(path)
    assert "blocks.1.attn.qkv.weight" in str(err.value) and "norm.bias" in str(err.value)


def test_an_img_size_the_patches_cannot_tile_is_an_error(parity_dir):
    with pytest.raises(ConfigError, match="img_size 100x100 is not a multiple of the patch size 16x16; use e.g. 96x96"):
        ViT(img_size=100, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        mimzoo.load(parity_dir / ENCODER, img_size=100)
    assert mimzoo.load(parity_dir / ENCODER, img_size=96).patch_embed.grid_size == (6, 6)
