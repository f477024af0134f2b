"""hubconf.py: `torch.hub.load(<repo>, NAME, source="local")` returns the zoo backbone for every zoo name."""
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

import mimzoo

from servers import FileServer

ROOT = Path(__file__).resolve().parents[1]


def test_every_zoo_name_is_a_torch_hub_entry():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)  # what torch.hub does with the file
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entries == set(mimzoo.list_models()) and len(entries) > 30
    assert "mae_mimic3m" in hubconf.mae_mimic3m.__doc__
    with pytest.raises(mimzoo.errors.ConfigError, match="mimzoo.models.ViT"):
        hubconf.mae_mimic3m(pretrained=False)


def test_torch_hub_load_returns_the_backbone_and_takes_load_keywords(tmp_path, monkeypatch, parity_dir):
    weights = (parity_dir / "mae_pretrain/checkpoint_released_encoder.pth").read_bytes()
    registry = tmp_path / "extra.yaml"
    with FileServer({"/tiny.pth": weights}) as host:
        registry.write_text(yaml.safe_dump({"models": {"tiny_mae": {
            "method": "mae", "format": "mae", "source": {"url": f"{host.url}/tiny.pth"}}}}))
        monkeypatch.setenv("MIMZOO_REGISTRY", str(registry))
        vit = torch.hub.load(str(ROOT), "tiny_mae", source="local", trust_repo=True, progress=False)
        resized = torch.hub.load(str(ROOT), "tiny_mae", source="local", img_size=64, progress=False)
    want = mimzoo.load("tiny_mae")  # from the cache: the same file
    x = torch.randn(1, 3, vit.patch_embed.img_size[0], vit.patch_embed.img_size[1])
    assert isinstance(vit, mimzoo.models.ViT) and resized.patch_embed.img_size == (64, 64)
    with pytest.raises(mimzoo.errors.ConfigError, match="holds the encoder only"):  # pretrainer=True reached load
        torch.hub.load(str(ROOT), "tiny_mae", source="local", pretrainer=True)
    with torch.no_grad():
        assert torch.equal(vit.forward_features(x), want.forward_features(x))
