import math

import pytest
import torch
import torch.nn.functional as F

from mimzoo.models import IMAGENET_MEAN, IMAGENET_STD
from mimzoo.views import CroCoPairViews, MAEViews, PairViews, TwoCropViews, relative_boxes

from conftest import load_io
from tiny import tiny

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def smooth_images(batch: int, h: int = 120, w: int = 160, device="cpu") -> torch.Tensor:
    """uint8 (B, 3, h, w): low-frequency, not mirror-symmetric, different per sample."""
    y = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    b = torch.arange(batch, dtype=torch.float64).view(batch, 1, 1, 1)
    img = 127.5 + 60 * torch.sin(2 * math.pi * (x / 97 + c / 3 + b / 7)) * torch.cos(2 * math.pi * y / 131) \
        + 50 * (x / w) * (1 - y / h) - 25
    return img.round().clamp(0, 255).to(torch.uint8).to(device)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN.to(x01.device)) / STD.to(x01.device)


def reference_view(image: torch.Tensor, box: torch.Tensor, flipped: bool, size: int) -> torch.Tensor:
    """Crop the source with the box, resize (bicubic, half-pixel), clamp, flip, normalise: done by hand in torch."""
    x0, y0, x1, y1 = (int(v) for v in box.tolist())
    crop = image[None, :, y0:y1, x0:x1].float() / 255
    out = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return normalise(out.flip(-1) if flipped else out)[0]


def check_boxes(boxes: torch.Tensor, h: int, w: int, scale, ratio):
    x0, y0, x1, y1 = boxes.unbind(-1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    bw, bh = x1 - x0, y1 - y0
    area = bw * bh / (h * w)
    tol = 1 / bh + 1 / bw  # width and height are rounded to whole pixels
    assert (area >= scale[0] * (1 - tol)).all() and (area <= scale[1] * (1 + tol)).all(), (area.min(), area.max())
    r = bw / bh
    assert (r >= ratio[0] * (1 - tol)).all() and (r <= ratio[1] * (1 + tol)).all(), (r.min(), r.max())


def check_pixels(images, boxes, flipped, views, size):
    for b in range(images.shape[0]):
        ref = reference_view(images[b], boxes[b], bool(flipped[b]), size)
        err = (views[b] - ref).abs()
        assert err.max() < 1e-3, (b, err.max())
        # the check has power: the other flip state would not match
        other = reference_view(images[b], boxes[b], not bool(flipped[b]), size)
        assert (views[b] - other).abs().mean() > 0.02


# ---------------------------------------------------------------------------------------------------------- MAE
def test_mae_views_shapes_boxes_pixels():
    images = smooth_images(24)
    m = MAEViews(size=48, scale=(0.2, 1.0))
    out = m(images, seed=0)
    assert out.images.shape == (24, 3, 48, 48) and out.images.dtype == torch.float32
    assert out.boxes.shape == (24, 4) and out.boxes.dtype == torch.float32
    assert out.flipped.shape == (24,) and out.flipped.dtype == torch.bool
    assert out.images.device.type == out.boxes.device.type == out.flipped.device.type == "cpu"
    assert 0 < out.flipped.sum() < 24
    assert out.boxes.unique(dim=0).shape[0] > 20  # one draw per sample
    check_pixels(images, out.boxes, out.flipped, out.images, 48)


def test_mae_views_scale_ratio_ranges():
    images = torch.zeros(512, 3, 100, 150, dtype=torch.uint8)
    for scale, ratio in [((0.2, 1.0), (3 / 4, 4 / 3)), ((0.5, 0.6), (0.5, 2.0))]:
        out = MAEViews(size=16, scale=scale, ratio=ratio)(images, seed=1)
        check_boxes(out.boxes, 100, 150, scale, ratio)
        area = ((out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1]) / 15000)
        assert area.max() - area.min() > (scale[1] - scale[0]) * 0.7  # the range is used, not one value
    assert not MAEViews(size=16, hflip=0.0)(images[:64], seed=0).flipped.any()
    assert MAEViews(size=16, hflip=1.0)(images[:64], seed=0).flipped.all()


def _ks(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    grid = torch.cat([a, b]).sort().values
    cdf = lambda x: torch.searchsorted(x.sort().values, grid, right=True) / len(x)  # noqa: E731
    return (cdf(a) - cdf(b)).abs().max().item()


def test_resized_crop_boxes_follow_torchvisions_sampler():
    """Scale, ratio and position of the crops over a whole 300 x 500 photo, ours vs torchvision's
    RandomResizedCrop.get_params (10 000 draws each): KS distances below 0.03 (0.028 is the 0.1 % critical value
    for two samples of one distribution; measured 0.007-0.014); a sampler confined to the centre square would fail
    the position."""
    from torchvision.transforms import RandomResizedCrop

    from mimzoo.resized_crops import rrc_boxes

    n, (h, w) = 10_000, (300, 500)
    for scale in ((0.2, 1.0), (0.08, 1.0)):
        torch.manual_seed(0)
        ours = rrc_boxes(torch.tensor([[h, w]]).expand(n, 2), scale, (3 / 4, 4 / 3))
        torch.manual_seed(1)
        photo = torch.zeros(3, h, w)
        i, j, bh, bw = torch.tensor([RandomResizedCrop.get_params(photo, list(scale), [3 / 4, 4 / 3])
                                     for _ in range(n)]).float().unbind(1)
        theirs = torch.stack([j, i, j + bw, i + bh], 1)

        def stats(b):
            bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            return [bw * bh / (h * w), (bw / bh).log(), (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2]

        distances = [_ks(a, b) for a, b in zip(stats(ours), stats(theirs))]
        assert max(distances) < 0.03, (scale, distances)
        assert (ours[:, 2] <= w).all() and (ours[:, 3] <= h).all() and (ours[:, :2] >= 0).all()
        # the full width is used: crops inside the centre square (x 100..400, at least 150 wide) centre in 175..325
        centres = (ours[:, 0] + ours[:, 2]) / 2
        assert centres.min() < 100 and centres.max() > 400


def test_padded_images_of_different_sizes_are_cropped_inside_their_own_extent():
    """A zero-padded batch with true sizes (ImageDataModule(crop="full")): every box lies in its own image, the
    pixels equal the crop of the unpadded image resized alone, and SiameseIM's geometry uses each image's width."""
    sizes = [(60, 90), (90, 40), (48, 48)]
    photos = [smooth_images(1, h, w)[0] for h, w in sizes]
    batch = torch.zeros(3, 3, 90, 90, dtype=torch.uint8)
    for b, p in enumerate(photos):
        batch[b, :, : p.shape[1], : p.shape[2]] = p
    true = torch.tensor(sizes)
    # MAE's pretraining view, and fine-tuning's (its RandomResizedCrop over the full image, then the Kornia steps:
    # here only the normalisation, RandAugment and erasing off, to compare pixels)
    finetune = tiny("finetune", image_size=32, randaug_n=0, reprob=0.0).train_views.train()
    for views, scale in ((MAEViews(size=32, scale=(0.2, 1.0)), (0.2, 1.0)), (finetune, (0.08, 1.0))):
        for seed in range(4):
            out = views(batch, seed=seed, sizes=true)
            for b, (h, w) in enumerate(sizes):
                check_boxes(out.boxes[b:b + 1], h, w, scale, (3 / 4, 4 / 3))
            check_pixels(torch.stack([torch.nn.functional.pad(p, (0, 90 - p.shape[2], 0, 90 - p.shape[1]))
                                      for p in photos]), out.boxes, out.flipped, out.images, 32)
    two = TwoCropViews(size=32, color=False)(batch, seed=0, sizes=true)
    rel = two.relative_boxes()
    widths = true[:, 1].float()
    manual = relative_boxes(two.boxes1, two.boxes2, two.flipped1, two.flipped2, widths)
    assert all(torch.equal(a, b) for a, b in zip(rel, manual))
    assert not torch.equal(rel.flip_delta_j, relative_boxes(two.boxes1, two.boxes2, two.flipped1, two.flipped2,
                                                            90.0).flip_delta_j) or not two.flipped1.any()
    m = MAEViews(size=32).eval()
    centre = m(batch, sizes=true)
    side = (true.min(1).values.float() * 0.875).round()
    assert torch.equal(centre.boxes[:, 2] - centre.boxes[:, 0], side)


def test_mae_views_determinism():
    images = smooth_images(8, 64, 80)
    m = MAEViews(size=32)
    a, b, c = m(images, seed=5), m(images, seed=5), m(images, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.flipped, b.flipped)
    assert not torch.equal(a.boxes, c.boxes)
    # the global seed (what lightning.seed_everything sets) gives the same draws as seed=
    torch.manual_seed(5)
    g = m(images)
    assert torch.equal(g.images, a.images) and torch.equal(g.boxes, a.boxes)
    torch.manual_seed(5)
    assert torch.equal(MAEViews(size=32)(images).boxes, a.boxes)  # a fresh module too
    # moving the module (Lightning does) keeps the draws on the CPU generator in float32
    assert torch.equal(m.double()(images, seed=5).boxes, a.boxes)
    # seed= leaves the global generator alone
    state = torch.get_rng_state()
    m(images, seed=123)
    assert torch.equal(state, torch.get_rng_state())


def test_mae_views_eval_center_crop():
    images = smooth_images(3, 100, 150)
    m = MAEViews(size=56).eval()  # resize shorter side to int(56 / 0.875) = 64, centre crop 56
    a, b = m(images, seed=1), m(images, seed=2)
    assert torch.equal(a.images, b.images) and not a.flipped.any()
    s = 64 / 100  # resized / source
    side = 56 / s
    expected = torch.tensor([(150 - side) / 2, (100 - side) / 2, (150 + side) / 2, (100 + side) / 2])
    assert torch.allclose(a.boxes, expected.expand(3, 4), atol=1 / s)
    # content: the centre of the source, resized
    ref = F.interpolate(images.float() / 255, size=(64, 96), mode="bicubic", align_corners=False,
                        antialias=True).clamp(0, 1)[..., 4:60, 20:76]
    assert (a.images - normalise(ref)).abs().mean() < 0.02


# ---------------------------------------------------------------------------------------------------------- MIMIC pairs
def test_pair_views_swap_statistics_and_content():
    n = 4000
    x1 = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    x2 = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8)
    m = PairViews(size=8)
    out = m(x1, x2, seed=0)
    assert out.images1.shape == out.images2.shape == (n, 3, 8, 8) and out.images1.dtype == torch.float32
    assert out.swapped.dtype == torch.bool and out.swapped.shape == (n,)
    assert abs(out.swapped.float().mean().item() - 0.5) < 0.05  # 4.5 sigma
    s = out.swapped[:, None, None, None]
    n1, n2 = normalise(x1.float() / 255), normalise(x2.float() / 255)
    torch.testing.assert_close(out.images1, torch.where(s, n2, n1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.images2, torch.where(s, n1, n2), atol=1e-6, rtol=0)
    assert torch.equal(m(x1, x2, seed=0).swapped, out.swapped) and not torch.equal(m(x1, x2, seed=1).swapped,
                                                                                    out.swapped)
    assert not PairViews(size=8, swap=0.0)(x1, x2).swapped.any()
    assert PairViews(size=8, swap=1.0)(x1, x2).swapped.all()
    ev = m.eval()(x1, x2)
    assert not ev.swapped.any() and torch.allclose(ev.images1, n1, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- CroCo
def test_croco_pair_views_independent_crops():
    a, b = smooth_images(16, 48, 40), smooth_images(16, 48, 40).flip(0)
    out = CroCoPairViews(size=32, color=False)(a, b, seed=0)
    assert out.images1.shape == out.images2.shape == (16, 3, 32, 32) and out.images1.dtype == torch.float32
    for boxes in (out.boxes1, out.boxes2):
        assert ((boxes[:, 2:] - boxes[:, :2]) == 32).all()  # RandomCrop: no resize
        check_boxes(boxes, 48, 40, (32 * 32 / (48 * 40),) * 2, (1.0, 1.0))
    assert (out.boxes1 != out.boxes2).any(-1).sum() >= 14  # intentionally different windows
    assert not out.flipped1.any() and not out.flipped2.any()
    for imgs, boxes, views in ((a, out.boxes1, out.images1), (b, out.boxes2, out.images2)):
        for i in range(16):
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            torch.testing.assert_close(views[i], normalise(imgs[i:i + 1, :, y0:y1, x0:x1].float() / 255)[0],
                                       atol=1e-6, rtol=0)


def test_croco_pair_views_asymmetric_jitter_range():
    grey = torch.full((64, 3, 40, 40), 128, dtype=torch.uint8)
    out = CroCoPairViews(size=32)(grey, grey, seed=0)
    v1 = out.images1 * STD + MEAN  # back to [0, 1]; contrast and saturation leave grey alone
    v2 = out.images2 * STD + MEAN
    for v in (v1, v2):
        value = v.mean((1, 2, 3))
        assert value.min() >= 128 / 255 * 0.6 - 1e-4 and value.max() <= 128 / 255 * 1.4 + 1e-4
        assert value.max() - value.min() > 0.2  # brightness range (0.6, 1.4) is used
    assert ((v1 - v2).abs().amax((1, 2, 3)) > 1e-3).float().mean() > 0.9  # different params per image
    m = CroCoPairViews(size=32).eval()
    img = smooth_images(2, 40, 40)
    e1, e2 = m(img, img, seed=0), m(img, img, seed=1)
    assert torch.equal(e1.images1, e2.images1) and torch.equal(e1.images1, e1.images2)
    torch.testing.assert_close(e1.images1, normalise(img[..., 4:36, 4:36].float() / 255), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------- SiameseIM
def test_two_crop_views_boxes_flips_pixels():
    images = smooth_images(16, 100, 130)
    out = TwoCropViews(size=40, color=False)(images, seed=3)
    assert out.images1.shape == out.images2.shape == (16, 3, 40, 40) and out.images2.dtype == torch.float32
    assert out.source_size == (100, 130)
    assert (out.boxes1 != out.boxes2).any(-1).all()  # two independent crops
    for boxes, flipped, views in ((out.boxes1, out.flipped1, out.images1), (out.boxes2, out.flipped2, out.images2)):
        check_pixels(images, boxes, flipped, views, 40)
    big = torch.zeros(512, 3, 100, 130, dtype=torch.uint8)
    many = TwoCropViews(size=8, color=False)(big, seed=0)
    for boxes in (many.boxes1, many.boxes2):
        check_boxes(boxes, 100, 130, (0.08, 1.0), (3 / 4, 4 / 3))
    assert 0.4 < many.flipped1.float().mean() < 0.6 and 0.4 < many.flipped2.float().mean() < 0.6
    assert not torch.equal(many.flipped1, many.flipped2)


def test_two_crop_views_colour_and_eval():
    images = smooth_images(6, 40, 48)
    m = TwoCropViews(size=32)
    a, b = m(images, seed=0), m(images, seed=0)
    assert torch.equal(a.images1, b.images1) and torch.equal(a.images2, b.images2)
    assert torch.isfinite(a.images1).all() and torch.isfinite(a.images2).all()
    plain = TwoCropViews(size=32, color=False)(images, seed=0)
    assert torch.equal(plain.boxes1, a.boxes1) and not torch.allclose(plain.images1, a.images1)  # blur p=1 on view 1
    m.eval()
    e = m(images, seed=1)
    assert torch.equal(e.images1, e.images2) and torch.equal(e.images1, m(images, seed=2).images1)
    rel = e.relative_boxes()
    assert torch.allclose(rel.delta_i, torch.zeros(6)) and torch.allclose(rel.delta_h, torch.ones(6))
    assert not rel.relative_flip.any()


def test_relative_boxes_geometry():
    """x2 patch centres mapped through the source image land where SiameseIM's formula puts them in x1's grid."""
    out = TwoCropViews(size=16, color=False)(torch.zeros(64, 3, 90, 120, dtype=torch.uint8), seed=0)
    rel = out.relative_boxes()
    g = 14
    c = torch.arange(g, dtype=torch.float64) + 0.5
    seen = set()
    for b in range(64):
        f1, f2 = bool(out.flipped1[b]), bool(out.flipped2[b])
        seen.add((f1, f2))
        (x0a, y0a, x1a, y1a), (x0b, y0b, x1b, y1b) = out.boxes1[b].double(), out.boxes2[b].double()
        sx = x1b - c / g * (x1b - x0b) if f2 else x0b + c / g * (x1b - x0b)  # source x of x2's patch centres
        px = ((x1a - sx) if f1 else (sx - x0a)) / (x1a - x0a) * g - 0.5  # in x1's patch units
        sy = y0b + c / g * (y1b - y0b)
        py = (sy - y0a) / (y1a - y0a) * g - 0.5
        if bool(rel.relative_flip[b]):
            fx = -rel.delta_w[b] * c + rel.flip_delta_j[b] * g - 0.5
        else:
            fx = rel.delta_w[b] * c + rel.delta_j[b] * g - 0.5
        fy = rel.delta_h[b] * c + rel.delta_i[b] * g - 0.5
        torch.testing.assert_close(fx.double(), px, atol=1e-4, rtol=0)
        torch.testing.assert_close(fy.double(), py, atol=1e-4, rtol=0)
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_relative_boxes_siameseim_parity(parity_dir):
    io = load_io(parity_dir / "siameseim")
    ijhw, flips, (_, W) = io["crop_boxes"], io["flips"].bool(), io["orig_size"].tolist()
    i, j, h, w = ijhw.unbind(-1)  # (B, view); j in the (possibly flipped) view's own frame
    x0 = torch.where(flips, W - j - w, j)  # back to the unflipped frame that our boxes use
    boxes = torch.stack([x0, i, x0 + w, i + h], -1)
    rel = relative_boxes(boxes[:, 0], boxes[:, 1], flips[:, 0], flips[:, 1], W)
    rel_cls = TwoCropViews.relative_boxes(boxes[:, 0], boxes[:, 1], flips[:, 0], flips[:, 1], W)
    for name in ("delta_i", "delta_j", "delta_h", "delta_w", "flip_delta_j"):
        got = getattr(rel, name)
        assert got.dtype == torch.float32
        assert (got - io[name]).abs().max() <= 1e-6, name
        assert torch.equal(got, getattr(rel_cls, name))
    assert rel.relative_flip.dtype == torch.bool and torch.equal(rel.relative_flip, io["relative_flip"].bool())


# ---------------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_match_cpu():
    images = smooth_images(8, 100, 130)
    cuda = images.cuda()
    cases = [(MAEViews(size=48), (images,)),
             (TwoCropViews(size=48), (images,)),
             (CroCoPairViews(size=48), (images, images.flip(0))),
             (PairViews(size=100), (images[..., :100], images.flip(0)[..., :100]))]
    for m, args in cases:
        for train in (True, False):
            m.train(train)
            ref = vars(m.cpu()(*args, seed=0))
            got = vars(m.cuda()(*(a.cuda() for a in args), seed=0))  # module on CUDA: draws stay on the CPU RNG
            for k, v in got.items():
                if not isinstance(v, torch.Tensor):
                    assert v == ref[k]
                    continue
                assert v.device.type == "cuda" and v.dtype == ref[k].dtype, k
                if v.is_floating_point() and v.dim() == 4:
                    tol = 0.05 if isinstance(m, (TwoCropViews, CroCoPairViews)) and train else 1e-3
                    assert (v.cpu() - ref[k]).abs().max() < tol, (type(m).__name__, k)
                else:
                    assert torch.equal(v.cpu(), ref[k]), (type(m).__name__, k)
    assert cuda.is_cuda
