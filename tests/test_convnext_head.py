"""MultiMAE's ConvNeXt adapter head (mimzoo.tasks.convnext_head) with the ADE20K settings: size, layout, reach."""
import math

import pytest
import torch

from mimzoo.tasks.convnext_head import ConvNeXtAdapterHead

# MIMIC's ADE20K fine-tuning log: ViT-B + ConvNeXt adapter, 150 classes; ViT-B encoder without its fixed position
# table and without a final norm (MultiMAE's MultiViT, one global token).
MIMIC_ADE_PARAMS = 95_234_454
VIT_B_ENCODER_PARAMS = 85_645_824


def test_parameter_count_matches_mimic_ade_log():
    head = ConvNeXtAdapterHead(768, 150, patch_size=16, preds_per_patch=16, depth=4)
    n = sum(p.numel() for p in head.parameters())
    assert n == MIMIC_ADE_PARAMS - VIT_B_ENCODER_PARAMS == 9_588_630
    # 768 -> 6144 projection, four width-384 ConvNeXt blocks, 1x1 conv to 150 classes
    assert sum(p.numel() for p in head.proj.parameters()) == 768 * 6144 + 6144
    per_block = (49 + 1) * 384 + 2 * 384 + 2 * 384 * 1536 + 1536 + 384
    assert sum(p.numel() for p in head.blocks.parameters()) == 4 * per_block
    assert head.classifier.weight.shape == (150, 384, 1, 1)


def test_linear_layers_start_xavier_uniform():
    # MultiMAE's constructor re-initialises the adapter's Linear layers (trunc-normal 0.02 on their own) Xavier-uniform
    head = ConvNeXtAdapterHead(768, 150, depth=1)
    for layer in (head.proj, head.blocks[0].pwconv1, head.blocks[0].pwconv2):
        bound = math.sqrt(6 / sum(layer.weight.shape))
        assert 0.99 * bound < layer.weight.abs().max() <= bound
        assert not layer.bias.any()


@torch.no_grad()
def test_full_head_non_square_uses_last_map_only():
    torch.manual_seed(0)
    head = ConvNeXtAdapterHead(768, 150).eval()
    out = head([torch.randn(1, 768, 16, 24)], (256, 384))
    assert out.shape == (1, 150, 256, 384) and torch.isfinite(out).all()
    small = ConvNeXtAdapterHead(64, 7, hidden_dim=16 * 8).eval()
    last = torch.randn(2, 64, 16, 24)
    assert torch.equal(small([torch.randn(2, 64, 16, 24), last], (256, 384)), small([last], (256, 384)))


@torch.no_grad()
def test_shape_512():
    # shapes depend on patch size and sub-patch count only, so a narrow head keeps this fast
    head = ConvNeXtAdapterHead(64, 150, hidden_dim=16 * 8).eval()
    assert head([torch.randn(2, 64, 32, 32)], (512, 512)).shape == (2, 150, 512, 512)


@torch.no_grad()
def test_sub_patch_layout():
    # identity projection and classifier, no blocks, 2x2 sub-patches of 3 channels, one output pixel per sub-patch:
    # token channel (row * 2 + col) * 3 + c lands at pixel (2i + row, 2j + col), class c (as upstream's rearranges)
    for mode in ("bilinear", "nearest"):
        head = ConvNeXtAdapterHead(12, 3, patch_size=2, preds_per_patch=4, depth=0, hidden_dim=12,
                                   interpolate_mode=mode)
        head.proj.weight.copy_(torch.eye(12))
        head.proj.bias.zero_()
        head.classifier.weight.copy_(torch.eye(3)[:, :, None, None])
        head.classifier.bias.zero_()
        feat = torch.randn(2, 12, 3, 5)
        out = head([feat], (6, 10))
        expected = torch.empty(2, 3, 6, 10)
        for i in range(3):
            for j in range(5):
                for r in range(2):
                    for q in range(2):
                        expected[:, :, 2 * i + r, 2 * j + q] = feat[:, (r * 2 + q) * 3:(r * 2 + q + 1) * 3, i, j]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def changed_box(head, grid, size, at):
    torch.manual_seed(1)
    feat = torch.randn(1, head.proj.in_features, *grid, dtype=torch.float64)
    moved = feat.clone()
    moved[:, :, at[0], at[1]] += 3.0
    with torch.no_grad():
        diff = (head([moved], size) - head([feat], size)).abs().amax(dim=(0, 1)) > 0
    rows, cols = diff.any(1).nonzero().flatten(), diff.any(0).nonzero().flatten()
    return diff, (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


def test_pixels_of_a_patch_come_from_its_token_without_blocks():
    head = ConvNeXtAdapterHead(32, 5, depth=0, hidden_dim=16 * 4, interpolate_mode="nearest").double()
    diff, rows, cols = changed_box(head, (6, 8), (96, 128), (2, 5))
    assert rows == (32, 47) and cols == (80, 95) and diff[32:48, 80:96].all()


@pytest.mark.parametrize("at", [(7, 9), (1, 0)])
def test_receptive_field_of_the_ade_head(at):
    # four 7x7 depthwise convs at 1/4 resolution reach 12 sub-pixels (3 tokens) each way: sub-pixels
    # [4i - 12, 4i + 15]; bilinear x4 (align_corners=False) then touches output pixels [16i - 50, 16i + 65]
    head = ConvNeXtAdapterHead(32, 5, depth=4, hidden_dim=16 * 8).double()
    diff, rows, cols = changed_box(head, (12, 14), (192, 224), at)
    reach = lambda k, n: (max(16 * k - 50, 0), min(16 * k + 65, n - 1))
    assert rows == reach(at[0], 192) and cols == reach(at[1], 224)
    assert diff[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1].all()
