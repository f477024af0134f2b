"""View makers that run batched on the training device (called from a LightningModule's `on_after_batch_transfer`).

Input: uint8 images (B, 3, H, W) on any device (float input is taken as already in [0, 1]). Output: a small dataclass
with float32 views normalised with mean/std, and the parameters that relate each view to its source image: crop
boxes as (x0, y0, x1, y1) in source pixels (x1, y1 exclusive, always in the UNFLIPPED source frame) and flip flags.

Built on Kornia: `RandomResizedCrop` / `RandomCrop` / `CenterCrop` in "slice" mode with half-pixel resizing
(`align_corners=False`, as torchvision and PIL resize), `RandomHorizontalFlip`, `ColorJitter`, `RandomGrayscale`,
`RandomGaussianBlur`, `RandomSolarize`, `Resize`, `Normalize`. Crop boxes are read from Kornia's own parameters.

Randomness. Every draw comes from the CPU generator (`torch.default_generator`), also when the module sits on
CUDA (the Kornia samplers are pinned to the CPU, whatever `.to()` says). So `lightning.seed_everything(s)` (or
`torch.manual_seed(s)`) makes every view reproducible, a given seed draws the same boxes and flips on CPU and CUDA,
and the drawn crop indices need no device-to-host sync. `forward(..., seed=k)` draws from a private CPU generator
state seeded with `k` (`torch.random.fork_rng`), leaving the global state untouched: use it for reproducible
pictures or tests. Under DDP with one seed on every rank, offset the seed by the rank if the ranks must not share
draws (upstream seeds `seed + rank`).

`module.eval()` makes every view maker deterministic: MAE's eval transform (resize the shorter side to
`size / 0.875`, centre crop `size`), no flips, no swaps, no colour.

Deviations from the upstream (PIL / torchvision, per-image) pipelines, common to all makers: bicubic resizing is
torch's (`F.interpolate`, a = -0.75, clamped to [0, 1]; PIL uses a = -0.5 and antialiases when shrinking, Kornia's
crop-resize does not antialias; the datamodules decode to about 256 px, so shrinking is small); colour ops run in
float without PIL's uint8 rounding after each op.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import kornia.augmentation as K
import torch
from torch import nn

from .models import IMAGENET_MEAN, IMAGENET_STD
from .resized_crops import centre_boxes, crop_resize, rrc_boxes

__all__ = ["Views", "Pair", "TwoViews", "RelativeBoxes", "MAEViews", "PairViews", "CroCoPairViews", "TwoCropViews",
           "EvalView", "Augmentation", "mae_eval_crop", "relative_boxes", "MultiCrops", "MultiCropViews", "byol_colour"]


@dataclass
class Views:
    images: torch.Tensor  # (B, 3, size, size) float32, normalised
    boxes: torch.Tensor  # (B, 4) float32 x0, y0, x1, y1 of the crop in source pixels (unflipped frame)
    flipped: torch.Tensor  # (B,) bool: the view is the horizontally mirrored crop


@dataclass
class Pair:
    images1: torch.Tensor  # (B, 3, size, size) float32, normalised; the view to mask
    images2: torch.Tensor  # (B, 3, size, size) float32, normalised; the reference view
    swapped: torch.Tensor  # (B,) bool: images1 came from the second input


class RelativeBoxes(NamedTuple):
    """SiameseIM's relative geometry of view 2 in view 1 (`DataAugmentationForSIM` outputs 2..7); a tuple, so it can be
    passed as the model's `rel_pos_21` argument as is."""
    delta_i: torch.Tensor
    delta_j: torch.Tensor
    delta_h: torch.Tensor
    delta_w: torch.Tensor
    relative_flip: torch.Tensor  # bool
    flip_delta_j: torch.Tensor


@dataclass
class TwoViews:
    images1: torch.Tensor  # (B, 3, size, size) float32, normalised
    images2: torch.Tensor
    boxes1: torch.Tensor  # (B, 4) x0, y0, x1, y1 in source pixels (unflipped frame)
    boxes2: torch.Tensor
    flipped1: torch.Tensor  # (B,) bool
    flipped2: torch.Tensor
    source_size: tuple[int, int] | torch.Tensor  # (H, W) of the source images, or (B, 2) per image when padded

    def relative_boxes(self) -> RelativeBoxes:
        width = self.source_size[1] if isinstance(self.source_size, tuple) else self.source_size[:, 1]
        return relative_boxes(self.boxes1, self.boxes2, self.flipped1, self.flipped2, width)


def relative_boxes(boxes1: torch.Tensor, boxes2: torch.Tensor, flipped1: torch.Tensor, flipped2: torch.Tensor,
                   width: float | torch.Tensor) -> RelativeBoxes:
    """SiameseIM's `(delta_i, delta_j, delta_h, delta_w, relative_flip, flip_delta_j)` =
    `((i2-i1)/h1, (j2-j1)/w1, h2/h1, w2/w1, flip1 xor flip2, (W-j1-j2)/w1)` with (i, j, h, w) the crop's top, left,
    height, width in pixels, j measured in the view's own frame: upstream flips the whole image, then crops, so a
    flipped view's left edge is `W - x1`. boxes: (B, 4) x0, y0, x1, y1 in the unflipped source frame; width: W (a
    number or a (B,) tensor)."""
    def ijhw(boxes, flipped):
        x0, y0, x1, y1 = boxes.float().unbind(-1)
        return y0, torch.where(flipped.bool(), width - x1, x0), y1 - y0, x1 - x0

    (i1, j1, h1, w1), (i2, j2, h2, w2) = ijhw(boxes1, flipped1), ijhw(boxes2, flipped2)
    return RelativeBoxes((i2 - i1) / h1, (j2 - j1) / w1, h2 / h1, w2 / w1, flipped1.bool() ^ flipped2.bool(),
                         (width - j1 - j2) / w1)


def mae_eval_crop(size: int, interpolation: str = "bicubic") -> tuple[K.Resize, K.CenterCrop]:
    """MAE's evaluation transform (every method's validation view and the classifiers' evaluation): resize the
    shorter side to int(size / 0.875) (256 for 224), antialiased as PIL resizes, then centre crop `size`."""
    return (K.Resize(int(size / 0.875), side="short", resample=interpolation, align_corners=False, antialias=True),
            K.CenterCrop(size))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is taken as already in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


class EvalView(nn.Module):
    """MAE's evaluation transform as one module: uint8 (or [0, 1] float) images -> resized, centre-cropped,
    normalised float32 images. Deterministic in train and eval mode alike."""

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"):
        super().__init__()
        self.resize, self.center = mae_eval_crop(size, interpolation)
        self.normalize = K.Normalize(torch.tensor(tuple(mean)), torch.tensor(tuple(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.center(self.resize(to_float(images))).clamp(0, 1)).float()


class Augmentation(nn.Module):
    """Holds an augmentation pipeline outside the state dict and the optimizer: Kornia's RandAugment carries
    (learnable) policy parameters that are not model weights and would break strict checkpoint loading.
    Device moves and train/eval still reach it."""

    def __init__(self, pipeline: nn.Module):
        super().__init__()
        self.__dict__["pipeline"] = pipeline.requires_grad_(False)

    def _apply(self, fn, recurse=True):
        self.pipeline._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        self.pipeline.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pipeline(x)


class _ViewMaker(nn.Module):
    """Shared logic: uint8 -> float, normalisation, boxes and flags from Kornia's parameters, the eval transform,
    CPU-pinned sampling and per-call seeding."""

    def __init__(self, size: int, mean, std, interpolation: str = "bicubic"):
        super().__init__()
        self.size, self.mean, self.std, self.interpolation = size, tuple(mean), tuple(std), interpolation
        self.normalize = K.Normalize(torch.tensor(self.mean), torch.tensor(self.std))
        self.eval_resize, self.center = mae_eval_crop(size, interpolation)

    def _stateless(self) -> None:
        """View makers hold no learned state: Kornia's sampling constants (buffers) stay out of checkpoints."""
        for m in self.modules():
            m._non_persistent_buffers_set.update(m._buffers)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        for m in self.modules():  # keep every Kornia sampler on the CPU generator (see the module docstring)
            if m is not self and hasattr(m, "set_rng_device_and_dtype"):
                m.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)
        return out

    def forward(self, *images: torch.Tensor, seed: int | None = None, sizes: torch.Tensor | None = None):
        """sizes: (B, 2) true (h, w) of zero-padded images of different sizes (`ImageDataModule(crop="full")`);
        crops then stay inside each image. View makers of fixed-size inputs (pairs) take none."""
        with _seeded(seed) if seed is not None else nullcontext():
            return self.make(*images) if sizes is None else self.make(*images, sizes=sizes)

    def make(self, *images: torch.Tensor):
        raise NotImplementedError

    @staticmethod
    def _sizes(x: torch.Tensor, sizes: torch.Tensor | None) -> torch.Tensor:
        if sizes is not None:
            return sizes.to(x.device, non_blocking=True)
        return torch.tensor(x.shape[-2:], device=x.device).expand(x.shape[0], 2)

    def _resized_crop(self, x: torch.Tensor, sizes: torch.Tensor | None, size: int, scale, ratio,
                      hflip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """torchvision's RandomResizedCrop over each image's full extent, then a horizontal flip with probability
        `hflip`, batched (`mimzoo.resized_crops`): (views in [0, 1] floats, boxes, flipped)."""
        boxes = rrc_boxes(self._sizes(x, sizes), scale, ratio)
        flipped = (torch.rand(x.shape[0]) < hflip).to(x.device, non_blocking=True)
        return crop_resize(x, boxes, size, self.interpolation, flipped), boxes, flipped

    _float = staticmethod(to_float)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x.clamp(0, 1)).float()  # clamp: bicubic overshoots

    @staticmethod
    def _boxes(aug: nn.Module, device, scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """(B, 4) x0, y0, x1, y1 from a Kornia crop's `src` corners (TL, TR, BR, BL; inclusive pixel indices)."""
        src = aug._params["src"].float()
        boxes = torch.cat([src[:, 0], src[:, 2] + 1], dim=1)
        return (boxes / boxes.new_tensor(scale).repeat(2)).to(device, non_blocking=True)

    @staticmethod
    def _applied(aug: nn.Module, device) -> torch.Tensor:
        return aug._params["batch_prob"].to(device, non_blocking=True) > 0.5

    def _center_view(self, images: torch.Tensor, resize: bool = True,
                     sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic view: (resize the shorter side to size / 0.875, then) centre crop; its source box. Padded
        images of different `sizes`: the same centre square of each, resized without antialiasing."""
        x = self._float(images)
        if sizes is not None:
            boxes = centre_boxes(self._sizes(x, sizes), 0.875 if resize else self.size / min(x.shape[-2:]))
            return crop_resize(x, boxes, self.size, self.interpolation), boxes
        h, w = x.shape[-2:]
        if resize:
            x = self.eval_resize(x)
        scale = (x.shape[-1] / w, x.shape[-2] / h)  # resized pixels per source pixel (half-pixel grid)
        x = self.center(x)
        return x, self._boxes(self.center, x.device, scale)


@contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


class MAEViews(_ViewMaker):
    """MAE's training view (`RandomResizedCrop(size, scale, ratio, bicubic)` + `RandomHorizontalFlip(hflip)` +
    normalisation), one independent draw per sample; `forward(images, seed=None) -> Views`. In eval mode: resize the
    shorter side to size / 0.875 (256 for 224) and centre crop, no flip (MAE's eval transform)."""

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"):
        super().__init__(size, mean, std, interpolation)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip

    def make(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> Views:
        if not self.training:
            x, boxes = self._center_view(images, sizes=sizes)
            return Views(self._out(x), boxes, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
        x, boxes, flipped = self._resized_crop(self._float(images), sizes, self.size, self.scale, self.ratio,
                                               self.hflip)
        return Views(self._train_out(x), boxes, flipped)

    def _train_out(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(x)


class FinetuneViews(MAEViews):
    """MAE's fine-tuning view: `MAEViews`' RandomResizedCrop over each full image and flip (scale 0.08-1 here),
    then `after` on the [0, 1] crops instead of the bare normalisation (RandAugment, normalisation, random erasing:
    Kornia, held outside the state dict by `Augmentation`). Eval mode: MAE's eval transform."""

    def __init__(self, size: int, after: nn.Module, scale: tuple[float, float] = (0.08, 1.0), **kwargs):
        super().__init__(size, scale, **kwargs)
        self.after = Augmentation(after)
        self._stateless()

    def _train_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(x.clamp(0, 1)).float()


class PairViews(_ViewMaker):
    """MIMIC's cross-view loader (`MultiViewDataset` + `ToTensor` + `Normalize`): the stored views, randomly swapped
    with probability `swap` per pair (upstream: `random.choice([0, 1])`), no other augmentation.
    `forward(images1, images2, seed=None) -> Pair`. Inputs of another size than `size` are resized (bicubic) to it
    (upstream expects 224x224 files). Eval mode: no swap."""

    def __init__(self, size: int = 224, swap: float = 0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 interpolation: str = "bicubic"):
        super().__init__(size, mean, std, interpolation)
        self.swap = swap
        self.resize = K.Resize((size, size), resample=interpolation, align_corners=False, antialias=True)

    def make(self, images1: torch.Tensor, images2: torch.Tensor) -> Pair:
        x1, x2 = self._float(images1), self._float(images2)
        if x1.shape[-2:] != (self.size, self.size):
            x1, x2 = self.resize(x1), self.resize(x2)
        B = x1.shape[0]
        if self.training:
            swapped = (torch.rand(B) < self.swap).to(x1.device, non_blocking=True)
        else:
            swapped = torch.zeros(B, dtype=torch.bool, device=x1.device)
        s = swapped[:, None, None, None]
        return Pair(self._out(torch.where(s, x2, x1)), self._out(torch.where(s, x1, x2)), swapped)


class CroCoPairViews(_ViewMaker):
    """CroCo's pair augmentation `crop224+acolor` (`datasets/transforms.py`): `RandomCropPair` = an independent
    `RandomCrop(size)` on each image (no resize: the crop windows intentionally differ), then `ColorJitterPair(
    assymetric_prob=1)` = an independent `ColorJitter(brightness=contrast=saturation=(0.6, 1.4), hue=0)` per image,
    then normalisation. No flips and no swap: upstream has none (the paper's homography/rotation augmentations were
    removed in naver/croco@19a6a8e). `forward(images1, images2, seed=None) -> TwoViews` (flips all False).
    Not exact: Kornia draws the jitter's op order once per batch and view, torchvision once per image, and jitters in
    float instead of on uint8 PIL images. Eval mode: centre crop of both, no jitter."""

    def __init__(self, size: int = 224, brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=(0.6, 1.4),
                 hue: float = 0.0, color: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(size, mean, std)
        self.crop = K.RandomCrop((size, size))
        self.jitter = (K.ColorJitter(brightness, contrast, saturation, hue, p=1.0) if color else nn.Identity())

    def make(self, images1: torch.Tensor, images2: torch.Tensor) -> TwoViews:
        B, device = images1.shape[0], images1.device
        no_flip = torch.zeros(B, dtype=torch.bool, device=device)
        if not self.training:
            (x1, b1), (x2, b2) = self._center_view(images1, False), self._center_view(images2, False)
        else:
            x1 = self.crop(self._float(images1))
            b1 = self._boxes(self.crop, device)
            x2 = self.crop(self._float(images2))
            b2 = self._boxes(self.crop, device)
            x1, x2 = self.jitter(x1), self.jitter(x2)
        return TwoViews(self._out(x1), self._out(x2), b1, b2, no_flip, no_flip, tuple(images1.shape[-2:]))


def byol_colour(blur_p: float, solarize_p: float, blur_kernel: int = 23) -> nn.Sequential:
    """BYOL's colour augmentation of one view: `ColorJitter(0.4, 0.4, 0.2, 0.1)` p=0.8, `RandomGrayscale` p=0.2,
    `GaussianBlur(sigma in (0.1, 2))` p=`blur_p`, then `Solarize(128/255)` p=`solarize_p` (none when 0)."""
    ops = [K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
           K.RandomGaussianBlur(blur_kernel, (0.1, 2.0), p=blur_p)]
    if solarize_p:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold exactly 0.5
    return nn.Sequential(*ops)


class TwoCropViews(_ViewMaker):
    """SiameseIM's `DataAugmentationForSIM`: two independent `RandomResizedCrop(size, scale, ratio, bicubic)` of the
    same image (release `crop_min` 0.08), each with its own horizontal flip (p = `hflip`), then asymmetric colour
    (`color=True`): both views `ColorJitter(0.4, 0.4, 0.2, 0.1)` p=0.8 and `RandomGrayscale` p=0.2; view 1
    `GaussianBlur(sigma in (0.1, 2))` p=1.0; view 2 the blur with p=0.1 and `Solarize(128/255)` p=0.2.
    `forward(images, seed=None) -> TwoViews`; `TwoViews.relative_boxes()` (or `TwoCropViews.relative_boxes(...)`)
    gives the `(delta_i, delta_j, delta_h, delta_w, relative_flip, flip_delta_j)` tuple the model takes.
    Upstream flips the whole image, then crops; here the crop is drawn on the unflipped image and the crop is
    flipped: the same pixels and the same distribution (the sampler is mirror-symmetric), and `relative_boxes`
    mirrors the box (j = W - x1) for flipped views. Not exact: PIL's blur (radius = sigma, box approximation) vs a
    23-px Gaussian kernel; the jitter's op order is drawn once per batch and view. Eval mode: both views are MAE's
    eval view (resize, centre crop), unflipped, no colour."""

    relative_boxes = staticmethod(relative_boxes)

    def __init__(self, size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, color: bool = True,
                 blur_kernel: int = 23, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"):
        super().__init__(size, mean, std, interpolation)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        colour = (lambda blur_p, solarize_p: byol_colour(blur_p, solarize_p, blur_kernel)) if color else (
            lambda *_: nn.Identity())
        self.color1, self.color2 = colour(1.0, 0.0), colour(0.1, 0.2)
        self._stateless()

    def make(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> TwoViews:
        B, device = images.shape[0], images.device
        # relative_boxes mirrors flipped boxes in each image's own width
        source = tuple(images.shape[-2:]) if sizes is None else self._sizes(images, sizes)
        if not self.training:
            x, b = self._center_view(images, sizes=sizes)
            no_flip = torch.zeros(B, dtype=torch.bool, device=device)
            out = self._out(x)
            return TwoViews(out, out.clone(), b, b.clone(), no_flip, no_flip, source)
        src, views = self._float(images), []
        for colour in (self.color1, self.color2):
            x, boxes, flipped = self._resized_crop(src, sizes, self.size, self.scale, self.ratio, self.hflip)
            views.append((self._out(colour(x.clamp(0, 1))), boxes, flipped))
        (x1, b1, f1), (x2, b2, f2) = views
        return TwoViews(x1, x2, b1, b2, f1, f2, source)


@dataclass
class MultiCrops:
    global_views: torch.Tensor  # (G x B, 3, size, size) float32, normalised, view-major (all of view 0 first)
    local_views: torch.Tensor  # (L x B, 3, local_size, local_size), view-major; (0, 3, ...) without local views


class MultiCropViews(_ViewMaker):
    """MIM-Refiner's `train_byolaug_localviews`: two global `RandomResizedCrop(size, scale)` views with BYOL's
    colour asymmetry (view 1 blur p=1.0; view 2 blur p=0.1 and solarize p=0.2) and `num_local` local
    `RandomResizedCrop(local_size, local_scale)` views (blur p=0.5, no solarize); every view has its own flip
    (p = `hflip`), jitter p=0.8 and grayscale p=0.2, and its own crop per sample. `forward(images, seed=None) ->
    MultiCrops`. Not exact: PIL's blur (radius = sigma) vs a `blur_kernel`-px Gaussian kernel; Kornia draws the
    jitter's op order once per batch and view. Eval mode: MAE's eval view for the global views, the same view
    resized to `local_size` for the local ones, no flips, no colour."""

    def __init__(self, size: int = 224, local_size: int = 96, num_local: int = 10,
                 scale: tuple[float, float] = (0.25, 1.0), local_scale: tuple[float, float] = (0.05, 0.25),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5, blur_kernel: int = 23,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"):
        super().__init__(size, mean, std, interpolation)
        self.local_size, self.num_local = local_size, num_local
        self.scale, self.local_scale, self.ratio, self.hflip = tuple(scale), tuple(local_scale), tuple(ratio), hflip
        self.colours = nn.ModuleList([byol_colour(1.0, 0.0, blur_kernel), byol_colour(0.1, 0.2, blur_kernel)])
        self.local_colour = byol_colour(0.5, 0.0, blur_kernel)
        self.local_resize = K.Resize((local_size, local_size), resample=interpolation, align_corners=False,
                                     antialias=True)
        self._stateless()

    def make(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> MultiCrops:
        if not self.training:
            x = self._center_view(images, sizes=sizes)[0]
            local = self._out(self.local_resize(x)).repeat(self.num_local, 1, 1, 1)
            return MultiCrops(self._out(x).repeat(2, 1, 1, 1), local)
        src = self._float(images)

        def view(size, scale, colour):
            x = self._resized_crop(src, sizes, size, scale, self.ratio, self.hflip)[0]
            return self._out(colour(x.clamp(0, 1)))

        globals_ = [view(self.size, self.scale, colour) for colour in self.colours]
        local = [view(self.local_size, self.local_scale, self.local_colour) for _ in range(self.num_local)]
        empty = src.new_zeros(0, 3, self.local_size, self.local_size)
        return MultiCrops(torch.cat(globals_), torch.cat(local) if local else empty)
