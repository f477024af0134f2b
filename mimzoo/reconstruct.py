"""`mimzoo reconstruct`: what a pixel-reconstructing pretrainer (MAE, CroCo, MIMIC) fills in on the user's own
images, drawn as the validation pictures are (`ReconstructionPictures.reconstruction_picture`): per image,
[reference |] original | masked | reconstruction | reconstruction pasted into the visible patches."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, NotFoundError

if TYPE_CHECKING:  # torch is imported when a picture is made: `mimzoo --help` stays quick
    import torch

# what the methods without a pixel decoder predict: the error says why there is nothing to draw
PREDICTS = {
    "siameseim": "the momentum encoder's features of a second view",
    "mim_refiner": "instance-discrimination projections of its heads (nearest-neighbour alignment; no decoder)",
    "finetune": "class logits",
    "linear_probe": "class logits",
    "dense_finetune": "dense maps (depth, surface normals or segmentation)",
}
SEMANTICMIM_TARGETS = {"hog": "HOG features", "tokens": "visual-token ids",
                       "pixels": "normalised pixels of a fixed number of masked patches (not drawn here)"}


def reconstruct(images: Sequence[str | os.PathLike], model, out: str | os.PathLike = "reconstruction.png", *,
                reference: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
                mask_ratio: float | None = None, seed: int = 0, size: int | None = None) -> Path:
    """Mask each image with a seeded mask, reconstruct it and write one grid, one row per image; returns `out`.

    Args:
        images: image files (anything PIL decodes); each is resized (shorter side) and centre-cropped to the
            model's input size and normalised with the model's view mean / std.
        model: a zoo name, checkpoint file or folder (rebuilt as `mimzoo.load(..., model="pretrainer")` does), or
            an already loaded MAE / CroCo / MIMIC (its input size follows `size` in place; it runs in eval mode).
        out: the picture (format from the suffix: .png, .jpg, ...).
        reference: two-view pretrainers (CroCo, MIMIC): the second view, one for all images or one per image.
        mask_ratio: fraction of the patches removed (default: the model's own).
        seed: the masks' seed (the same seed draws the same masks).
        size: run at this input size (the position tables are resampled); default the model's.
    """
    import torch
    from PIL import Image

    from .methods import CroCo
    from .methods.pictures import write_picture

    if not images:
        raise ConfigError("no images to reconstruct")
    if mask_ratio is not None and not 0 <= mask_ratio < 1:
        raise ConfigError(f"mask ratio must be in [0, 1), got {mask_ratio}")
    fmt = Image.registered_extensions().get(Path(out).suffix.lower())
    if fmt is None:
        raise ConfigError(f"cannot tell an image format from {out}: name it .png or .jpg")
    references = [reference] if isinstance(reference, (str, os.PathLike)) else list(reference or [])
    opened = open_images([*images, *references])  # all before a download or a model build
    model = pixel_pretrainer(model, size)
    two_view = isinstance(model, CroCo)
    if two_view and len(references) not in (1, len(images)):
        raise ConfigError(f"{type(model).__name__} completes a masked view from a second view of the same scene: give "
                          f"it with --reference IMAGE (one for all images or one per image; got {len(references)} "
                          f"for {len(images)} images)")
    if references and not two_view:
        raise ConfigError(f"{type(model).__name__} reconstructs from the image alone; --reference is for the "
                          f"two-view pretrainers (CroCo, MIMIC)")
    ratio = model.hparams.mask_ratio if mask_ratio is None else mask_ratio
    device = next(model.parameters()).device
    side = model.backbone.patch_embed.img_size[0]
    x = views(opened[:len(images)], side, model.views.mean, model.views.std).to(device)
    ref = views(opened[len(images):], side, model.views.mean, model.views.std).to(device) if two_view else None
    if ref is not None and len(ref) == 1:
        ref = ref.expand(len(x), -1, -1, -1)
    noise = torch.rand(len(x), model.backbone.num_patches, generator=torch.Generator().manual_seed(seed)).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            result = model(x, ref, noise, mask_ratio=ratio) if two_view else model(x, noise, mask_ratio=ratio)
    finally:
        model.train(was_training)
    grid = model.reconstruction_picture(x, result, reference=ref, max_rows=len(x))
    return write_picture(grid, out, format=fmt)


def pixel_pretrainer(model, size: int | None):
    """The loaded (or given) pretrainer, if it reconstructs pixels; else a ConfigError saying what it predicts,
    raised from the file's config before anything is built (so the error is the only line the user sees)."""
    from . import loading
    from .methods import method_for, pretrainer
    from .methods.pictures import ReconstructionPictures

    if isinstance(model, (str, os.PathLike)):  # mimzoo.load(model, model="pretrainer"), checked in between
        converted = loading.read(model)
        cls = method_for(converted.config)
        if not issubclass(cls, ReconstructionPictures):
            held = converted.config.get("hyper_parameters", converted.config)  # a mimzoo file's, else upstream's
            raise ConfigError(cannot_reconstruct(cls, held.get("target", "hog")))
        return pretrainer(converted, **({"img_size": size} if size else {}))
    if not isinstance(model, ReconstructionPictures):
        raise ConfigError(cannot_reconstruct(type(model), getattr(model, "hparams", {}).get("target")))
    if size:
        model.set_input_size(size)
    return model


def open_images(paths: Sequence[str | os.PathLike]) -> list:
    """Each file decoded (PIL images), or one line naming the first that is missing or cannot be decoded."""
    from .data.images import open_image

    for p in paths:
        if not Path(p).is_file():
            raise NotFoundError(f"image {p} {'is a folder' if Path(p).is_dir() else 'does not exist'}")
    return [open_image(p) for p in paths]


def views(images: list, size: int, mean, std) -> torch.Tensor:
    """(B, 3, size, size) normalised float32: shorter side to `size`, centre crop (as the datasets decode)."""
    import torch

    from .data.images import square_uint8

    x = torch.stack([square_uint8(im, size) for im in images]).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def cannot_reconstruct(cls: type, target: str | None) -> str:
    name = getattr(cls, "name", None)
    what = SEMANTICMIM_TARGETS.get(target, target) if name == "semanticmim" else PREDICTS.get(
        name, "features (a backbone has no decoder)")
    return (f"{cls.__name__} predicts {what}, not the pixels of masked patches: there is no reconstruction to draw "
            f"(MAE, CroCo and MIMIC pretrainers have one)")


def cmd_reconstruct(args) -> int:
    path = reconstruct(args.images, args.model, args.out, reference=args.reference, mask_ratio=args.mask_ratio,
                       seed=args.seed, size=args.size)
    print(f"wrote {path}: one row per image, [reference |] original | masked | reconstruction | pasted")
    return 0
