import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def parity_root() -> Path:
    return Path(os.environ.get("MIMZOO_PARITY_DIR", REPO.parent / "shared" / "parity"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    root = parity_root()
    if not root.is_dir():
        pytest.skip(f"parity fixtures not found at {root} (set MIMZOO_PARITY_DIR)")
    return root


def load_io(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("io.safetensors", "io_extra.safetensors"):
        if (folder / name).is_file():
            out.update(load_file(folder / name))
    return out


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, what: str = ""):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's real cache, or talks to the real Hub."""
    import huggingface_hub.constants

    monkeypatch.setenv("MIMZOO_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "MIMZOO_GDRIVE_ENDPOINT", "HF_TOKEN", "MIMZOO_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub reads these once at import; a CI that exports HF_HUB_OFFLINE=1 must not flip the online tests,
    # and telemetry would ask the real Hub for its agent registry while building the user agent
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)
