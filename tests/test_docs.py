"""Every Python example of the README and docs/ runs as written: the zoo names it uses are served, from a loopback
host, as the tiny upstream-format fixtures of the same family (through MIMZOO_REGISTRY, as a private mirror would
be), and the placeholders (`images`, `img1`, a data loader, a run folder) are real tensors and files."""
import hashlib
import re
from pathlib import Path

import pytest
import torch
import yaml

from servers import FileServer
from tiny import tiny

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = {p.relative_to(ROOT).as_posix(): re.findall(r"```python\n(.*?)```", p.read_text(), re.S) for p in DOCS}

# zoo name -> (fixture, the entry's facts that the real entry records)
SERVED = {
    "mae_vit_base_patch16": ("mae_pretrain/checkpoint_released_encoder.pth", {"format": "mae", "num_heads": 3}),
    "mae_vit_base_patch16_full": ("mae_pretrain/checkpoint.pth",
                                  {"format": "mae", "num_heads": 3, "decoder": {"num_heads": 4},
                                   "targets": "norm_pix"}),
    "mae_vit_base_patch16_visualize": ("mae_pretrain/checkpoint_perturbed.pth",
                                       {"format": "mae", "num_heads": 3, "decoder": {"num_heads": 4},
                                        "targets": "pixel"}),
    "mae_mimic3m": ("mae_pretrain/mimic_multiview/checkpoint.pth",
                    {"format": "mimic", "num_heads": 3, "decoder": {"num_heads": 4}, "targets": "norm_pix"}),
    "croco_v2_vit_base_small_decoder": ("croco_v2/checkpoint.pth", {"format": "croco", "num_heads": 3}),
    "siameseim_vit_base_patch16": ("siameseim/checkpoint.pth",
                                   {"format": "siameseim", "num_heads": 3, "decoder": {"num_heads": 4}}),
}


@pytest.fixture
def mirror(parity_dir, tmp_path, monkeypatch):
    files = {f"/{name}.pth": (parity_dir / rel).read_bytes() for name, (rel, _) in SERVED.items()}
    with FileServer(files) as host:
        models = {name: {"method": facts["format"], **facts, "source": {"url": f"{host.url}/{name}.pth"},
                         "sha256": hashlib.sha256(files[f"/{name}.pth"]).hexdigest()}
                  for name, (_, facts) in SERVED.items()}
        (tmp_path / "mirror.yaml").write_text(yaml.safe_dump({"models": models}))
        monkeypatch.setenv("MIMZOO_REGISTRY", str(tmp_path / "mirror.yaml"))
        yield


def placeholders(tmp_path, parity_dir) -> dict:
    """The names the examples leave to the reader."""
    from mimzoo.methods import MAE

    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=g)
    run = tmp_path / "runs" / "quickstart" / "checkpoints"
    run.mkdir(parents=True)
    tiny(MAE).save_pretrained(run / "last.ckpt")  # a mimzoo folder stands in for the quick start's checkpoint
    loader = [{"image": torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=g),
               "label": torch.tensor([0, 1, 0, 1])}]
    return {"images": images, "img1": images, "img2": torch.randn(2, 3, 224, 224, generator=g), "B": 2,
            "uint8_images": torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=g),
            "torch": torch, "train_loader": loader, "test_loader": loader}


@pytest.mark.parametrize("doc", [d for d, blocks in BLOCKS.items() if blocks])
def test_examples_run(doc, mirror, parity_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = placeholders(tmp_path, parity_dir)
    for block in BLOCKS[doc]:
        code = block.replace("path/to/any/upstream_checkpoint.pth",
                             str(parity_dir / "croco" / "checkpoint.pth")).replace("path/to/mimzoo", str(ROOT))
        exec(compile(code, doc, "exec"), namespace)
