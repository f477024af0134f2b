"""Reconstruction pictures: what a MIM user looks at first to see whether training works."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from ..checkpoint import atomic_path
from ..models.decoders import patchify, unpatchify
from ..models.pos_embed import view2_centres_in_view1


def reconstruction_grid(images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                        mean, std, norm_pix: bool, reference: torch.Tensor | None = None,
                        max_rows: int = 8) -> torch.Tensor:
    """One row per sample: [reference |] original | masked | reconstruction | reconstruction pasted into the
    visible patches. Inputs are normalised images; with norm_pix the prediction is mapped back through each
    patch's own mean and std, as MAE's visualisation does."""
    n = min(max_rows, images.shape[0])
    images, pred, mask = images[:n].float(), pred[:n].float(), mask[:n].float()
    grid = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    target = patchify(images, patch_size)
    if norm_pix:
        pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(-1, keepdim=True)
    m = mask.unsqueeze(-1)
    recon = unpatchify(pred, patch_size, grid)
    masked = unpatchify(target * (1 - m), patch_size, grid)
    pasted = unpatchify(target * (1 - m) + pred * m, patch_size, grid)
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    columns = ([reference[:n].float()] if reference is not None else []) + [images, masked, recon, pasted]
    tiles = torch.stack([(c * std + mean).clamp(0, 1) for c in columns], dim=1).flatten(0, 1)
    if tiles.shape[-1] < 128:  # small training images: enlarge (nearest) so patches stay visible
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=128 // tiles.shape[-1], mode="nearest")
    return make_grid(tiles.cpu(), nrow=len(columns), padding=2, pad_value=1.0)


def save_epoch_picture(module, grid: torch.Tensor, folder: str) -> Path | None:
    """<run dir>/<folder>/epoch_XXXX.png from rank 0, every `picture_every_n_epochs` (hparam, default 1), never
    during the sanity check; written atomically. The same grid goes to each of the trainer's loggers that take
    images (TensorBoard, W&B), tagged `folder`, at the global step."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None or trainer.sanity_checking or trainer.global_rank != 0:
        return None
    every = max(1, int(module.hparams.get("picture_every_n_epochs", 1)))
    if (trainer.current_epoch + 1) % every:  # epochs 9, 19, ... for 10: where check_val_every_n_epoch=10 lands
        return None
    path = Path(trainer.log_dir or trainer.default_root_dir) / folder / f"epoch_{trainer.current_epoch:04d}.png"
    write_picture(grid, path)
    log_picture(trainer.loggers, folder, grid, trainer.global_step)
    return path


def write_picture(grid: torch.Tensor, path: str | Path, format: str = "png") -> Path:
    """A (3, H, W) [0, 1] grid as an image file, written atomically (a killed run never leaves half a PNG)."""
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format=format)
    return Path(path)


def log_picture(loggers, tag: str, grid: torch.Tensor, step: int) -> None:
    """Send a picture to the loggers that take images; the others (CSV) are skipped: the PNG is already on disk."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    grid = grid.detach().float().cpu()  # the dense predictions' grid is still on the device
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, step)  # CHW in [0, 1], TensorBoard's default layout
        elif isinstance(logger, WandbLogger):  # uint8 HWC: wandb would min-max stretch a float tensor
            rgb = grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            logger.log_image(key=tag, images=[rgb], step=step)


class ReconstructionPictures:
    """Mixin for LightningModules with `views` (mean/std), `backbone` and `norm_pix_loss`."""

    def reconstruction_picture(self, images: torch.Tensor, out, reference: torch.Tensor | None = None,
                               max_rows: int = 8) -> torch.Tensor:
        """`reconstruction_grid` of a forward's output (`.pred`, `.mask`) with this model's patch size, view
        normalisation and targets: the validation pictures and `mimzoo reconstruct` draw the same thing."""
        return reconstruction_grid(images, out.pred, out.mask, self.backbone.patch_embed.patch_size[0],
                                   self.views.mean, self.views.std, self.norm_pix_loss, reference, max_rows)

    def save_reconstructions(self, images: torch.Tensor, out, reference: torch.Tensor | None = None) -> Path | None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.sanity_checking:
            return None
        return save_epoch_picture(self, self.reconstruction_picture(images, out, reference), "reconstructions")


def attention_picture(images: torch.Tensor, maps: torch.Tensor, mean, std, max_rows: int = 4) -> torch.Tensor:
    """One row per image: the image, then one heat map per proxy token (`maps` (B, P, h, w), e.g.
    `models.semanticmim.proxy_attention`), each scaled to its own [min, max] and laid over the grey image; hot =
    attended."""
    n = min(max_rows, images.shape[0])
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    rgb = (images[:n].float() * s + m).clamp(0, 1)
    heat = torch.nn.functional.interpolate(maps[:n].float(), size=rgb.shape[-2:], mode="nearest")
    low, high = heat.amin((2, 3), keepdim=True), heat.amax((2, 3), keepdim=True)
    heat = ((heat - low) / (high - low).clamp_min(1e-12)).unsqueeze(2)  # (n, P, 1, H, W) in [0, 1]
    colour = torch.cat([heat.sqrt(), heat ** 2, 0.4 * (1 - heat)], dim=2)  # dark blue -> red -> yellow
    grey = rgb.mean(1, keepdim=True).unsqueeze(1)
    tiles = torch.cat([rgb.unsqueeze(1), 0.35 * grey + 0.65 * colour], dim=1).flatten(0, 1)
    if tiles.shape[-1] < 128:  # small training images: enlarge (nearest) so patches stay visible
        tiles = torch.nn.functional.interpolate(tiles, scale_factor=128 // tiles.shape[-1], mode="nearest")
    return make_grid(tiles.cpu(), nrow=1 + maps.shape[1], padding=2, pad_value=1.0)


def geometry_picture(images1: torch.Tensor, images2: torch.Tensor, rel, mean, std, patch_size: int,
                     max_rows: int = 4, scale: int = 4) -> torch.Tensor:
    """One row per sample: view 1 | view 2, each enlarged `scale` times; on view 2 a dot at every patch centre,
    coloured by its position (hue along the columns, brightness down the rows), and on view 1 the same dots where
    those centres land (outside view 1: not drawn). Where the geometry is right, each pair of dots sits on the
    same image content."""
    from PIL import Image, ImageDraw

    n = min(max_rows, images1.shape[0])
    size = images1.shape[-1]
    grid = size // patch_size
    y1, x1 = view2_centres_in_view1(type(rel)(*(t[:n] for t in rel)), grid)
    m = torch.tensor(mean, device=images1.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images1.device).view(1, 3, 1, 1)
    tiles = []
    for view in (images1[:n], images2[:n]):
        rgb = ((view.float() * s + m).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        tiles.append([Image.fromarray(t).resize((size * scale, size * scale), Image.Resampling.NEAREST) for t in rgb])
    radius = max(2, scale * patch_size // 8)
    for b in range(n):
        draws = [ImageDraw.Draw(tiles[0][b]), ImageDraw.Draw(tiles[1][b])]
        for k in range(grid * grid):
            r, c = divmod(k, grid)
            colour = tuple(int(v) for v in _hue(c / grid, 0.45 + 0.55 * (1 - r / grid)))
            for d, (py, px) in ((draws[1], (r, c)), (draws[0], (float(y1[b, k]), float(x1[b, k])))):
                cy, cx = (py + 0.5) * patch_size * scale, (px + 0.5) * patch_size * scale
                if 0 <= cy < size * scale and 0 <= cx < size * scale:
                    d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour, outline=(0, 0, 0))
    rows = [torch.from_numpy(np.array(t)).permute(2, 0, 1).float() / 255 for b in range(n)
            for t in (tiles[0][b], tiles[1][b])]
    return make_grid(rows, nrow=2, padding=4, pad_value=1.0)


def _hue(h: float, value: float) -> tuple[float, float, float]:
    import colorsys

    return tuple(255 * v for v in colorsys.hsv_to_rgb(h, 1.0, value))
