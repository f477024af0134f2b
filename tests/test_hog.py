"""MaskFeat's HOG targets: bit parity with mmpretrain's HOGGenerator, any size, layout, fp32 under autocast."""
import pytest
import torch
from safetensors.torch import load_file

from mimzoo.errors import ConfigError
from mimzoo.models.hog import HOG


def test_parity_with_upstream_is_bit_exact(parity_dir):
    io = load_file(parity_dir / "semanticmim" / "maskfeat" / "io.safetensors")
    out = HOG()(io["images"])
    assert out.shape == (2, 196, 108) and out.dtype == torch.float32
    assert torch.equal(out, io["hog_full"]), f"max abs diff {(out - io['hog_full']).abs().max().item():.3g}"


def test_any_size_gives_unit_histograms():
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = HOG()(x)
    assert out.shape == (2, 6, 108) and not out.requires_grad and torch.isfinite(out).all()
    norms = out.view(2, 6, 3, 9, 2, 2).norm(dim=3)  # one 9-bin histogram per (patch, channel, cell)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert torch.equal(out[1:], HOG()(x[1:]))  # no mixing across the batch


@pytest.mark.parametrize("row,col", [(0, 0), (0, 2), (1, 1)])
def test_patches_in_raster_order_and_cells_channel_major(row, col):
    # texture at rows 2..5 and cols 10..13 of one patch: the 3x3 Sobel reaches rows 1..6, cols 9..14, all inside
    # that patch's top-right cell (row 0, col 1), and in the green channel only; everything else is flat
    x = torch.zeros(1, 3, 32, 48)
    y0, x0 = 16 * row + 2, 16 * col + 10
    x[0, 1, y0:y0 + 4, x0:x0 + 4] = torch.arange(16.0).view(4, 4) ** 2
    out = HOG()(x).view(6, 3, 9, 2, 2)
    hit = out.abs().sum(dim=2) > 0  # (patch, channel, cell row, cell col)
    expected = torch.zeros_like(hit)
    expected[3 * row + col, 1, 0, 1] = True
    assert torch.equal(hit, expected)


def test_fp32_under_bf16_autocast():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = HOG()(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, HOG()(x.float()))


def test_constants_stay_out_of_the_state_dict():
    hog = HOG()
    assert hog.state_dict() == {}
    assert {n for n, _ in hog.named_buffers()} == {"weight_x", "weight_y", "gaussian_kernel"}


def test_size_not_divisible_by_patch_raises_one_line():
    with pytest.raises(ConfigError, match="30x32") as e:
        HOG()(torch.zeros(1, 3, 30, 32))
    assert "\n" not in str(e.value) and "divisible by 16" in str(e.value)
