"""Loading local checkpoints: bad input gets a clear error, good input round-trips exactly."""
import os

import pytest
import torch

import mimzoo
from mimzoo.checkpoint import CheckpointReadError, IncompatibleWeightsError
from mimzoo.cli import main as cli
from mimzoo.convert import ConversionError, UnsupportedCheckpointError
from mimzoo.models import ViT

from conftest import assert_close, load_io


@pytest.fixture(scope="module")
def mae_sd(parity_dir):
    ck = torch.load(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth", weights_only=True)
    return ck["model"]


def save(tmp_path, obj, name="ck.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointReadError, match="not a readable PyTorch checkpoint"):
        mimzoo.load(path)


def test_empty_and_truncated_files(tmp_path, parity_dir):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match="empty"):
        mimzoo.load(tmp_path / "empty.pth")
    data = (parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="truncated"):
        mimzoo.load(tmp_path / "half.pth")


class RunsCode:
    """A pickle whose __reduce__ would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_never_runs(tmp_path):
    target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsCode(target)}, path)
    with pytest.raises(CheckpointReadError, match="never runs code"):
        mimzoo.load(path)
    assert not os.path.exists(target)


def test_unsupported_family_lists_supported(tmp_path):
    path = save(tmp_path, {"encoder.layer.0.weight": torch.zeros(2, 2)})
    with pytest.raises(UnsupportedCheckpointError) as e:
        mimzoo.load(path)
    for fmt in ("mae", "croco", "mimic", "siameseim", "mim_refiner"):
        assert fmt in str(e.value)


def test_unaccounted_key_is_named(tmp_path, mae_sd):
    path = save(tmp_path, {"model": {**mae_sd, "blocks.0.attn.rel_pos_bias": torch.zeros(3)}})
    with pytest.raises(ConversionError, match=r"blocks\.0\.attn\.rel_pos_bias"):
        mimzoo.load(path)


def test_missing_key_is_named(tmp_path, mae_sd):
    sd = dict(mae_sd)
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(IncompatibleWeightsError, match=r"missing keys \['blocks\.1\.mlp\.fc2\.bias'\]"):
        mimzoo.load(save(tmp_path, {"model": sd}))


def test_wrong_shape_names_key_and_shapes(tmp_path, mae_sd):
    sd = dict(mae_sd)
    sd["blocks.0.attn.proj.weight"] = torch.zeros(192, 96)
    clash = r"blocks\.0\.attn\.proj\.weight: checkpoint \(192, 96\) vs model \(192, 192\)"
    with pytest.raises(IncompatibleWeightsError, match=clash):
        mimzoo.load(save(tmp_path, {"model": sd}))


def test_unknown_override():
    with pytest.raises(mimzoo.Error, match="unknown override"):
        mimzoo.load("whatever", depth=3)


def test_head_count_hint_required_for_odd_width(parity_dir):
    with pytest.raises(ConversionError, match="num_heads"):
        mimzoo.load(parity_dir / "siameseim" / "checkpoint.pth")


def test_ddp_prefix_and_bare_state_dict(tmp_path, mae_sd, parity_dir):
    io = load_io(parity_dir / "mae_pretrain")
    vit = mimzoo.load(save(tmp_path, {f"module.{k}": v for k, v in mae_sd.items()}))
    with torch.no_grad():
        assert_close(vit.forward_features(io["images"]), io["latent_all_sorted"])


def test_save_pretrained_round_trip(tmp_path, parity_dir):
    io = load_io(parity_dir / "croco_v2")
    vit = mimzoo.load(parity_dir / "croco_v2" / "checkpoint_perturbed.pth")
    vit.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} >= {"config.json", "model.safetensors"}
    for again in (ViT.from_pretrained(tmp_path / "saved"), mimzoo.load(tmp_path / "saved")):
        with torch.no_grad():
            assert_close(again.forward_features(io["images"]), io["perturbed.feat1"], what="round trip")


def test_convert_command_round_trip(tmp_path, parity_dir, capsys):
    io = load_io(parity_dir / "mae_pretrain" / "mimic_multiview")
    assert cli(["convert", str(parity_dir / "mae_pretrain" / "mimic_multiview" / "checkpoint_perturbed.pth"),
                str(tmp_path / "out")]) == 0
    assert "mimzoo.load" in capsys.readouterr().out
    vit = mimzoo.load(tmp_path / "out")
    with torch.no_grad():
        assert_close(vit.forward_features(io["images2"]), io["perturbed.latent2"])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_convert_command_reports_errors(tmp_path, capsys):
    (tmp_path / "bad.pth").write_text("nope")
    assert cli(["convert", str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_img_size_override_resamples_positions(parity_dir):
    for family in ("mae_pretrain", "croco_v2"):
        vit = mimzoo.load(parity_dir / family / "checkpoint.pth", img_size=256)
        assert vit.data_config["input_size"] == (3, 256, 256)
        assert vit.forward_features(torch.randn(1, 3, 256, 256)).shape[1] == 256 + vit.num_prefix_tokens
