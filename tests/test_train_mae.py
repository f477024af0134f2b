"""Training a tiny MAE: the loss falls, checkpoints load back as backbone and pretrainer, save_pretrained
round-trips, and the validation writes reconstruction pictures."""
import lightning as L
import pytest
import torch

import mimzoo
from mimzoo.methods import MAE

from tiny import tiny


def tiny_mae(blr: float, **kw):
    return tiny(MAE, optim={"blr": blr}, **kw)


@pytest.fixture(scope="module")
def photos():
    """Real photos (scikit-image), 40x40 uint8."""
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "retina", "immunohistochemistry",
                 "hubble_deep_field"):
        img = torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float()[None]
        out.append(torch.nn.functional.interpolate(img, size=(40, 40), mode="area")[0].round().to(torch.uint8))
    return torch.stack(out)


def loader(photos, repeats=4):
    items = [{"image": photos[i % len(photos)]} for i in range(len(photos) * repeats)]
    return torch.utils.data.DataLoader(items, batch_size=16, shuffle=True)


def test_fit_lowers_loss_and_checkpoints_load(photos, tmp_path):
    L.seed_everything(0)
    model = tiny_mae(blr=5e-3)
    x = (photos[:, :, 4:36, 4:36].float() / 255 - 0.45) / 0.225
    noise = torch.rand(len(x), 16, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        before = model(x, noise).loss.item()
    trainer = L.Trainer(max_epochs=15, accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, loader(photos), val_dataloaders=torch.utils.data.DataLoader(
        [{"image": p} for p in photos], batch_size=8))
    model.eval()
    with torch.no_grad():
        after = model(x, noise).loss.item()
    assert after < 0.8 * before, (before, after)

    pictures = sorted((tmp_path / "reconstructions").glob("epoch_*.png"))
    assert len(pictures) == 15
    from PIL import Image
    w, h = Image.open(pictures[-1]).size
    assert w > 4 * 32 and h > 32  # original | masked | reconstruction | pasted, one row per image

    ckpt = trainer.checkpoint_callback.best_model_path
    vit = mimzoo.load(ckpt)
    pre = mimzoo.load(ckpt, model="pretrainer")
    with torch.no_grad():
        assert torch.equal(vit.forward_features(x), model.backbone.forward_features(x))
        assert torch.equal(pre(x, noise).pred, model(x, noise).pred)

    model.save_pretrained(tmp_path / "saved")
    again = MAE.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(again(x, noise).pred, model(x, noise).pred)
        assert torch.equal(mimzoo.load(tmp_path / "saved").forward_features(x), model.backbone.forward_features(x))


def test_lr_follows_effective_batch(photos, tmp_path):
    model = tiny_mae(blr=1e-3)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, accumulate_grad_batches=2, default_root_dir=tmp_path)
    trainer.fit(model, loader(photos))
    # 16 per batch x 1 device x 2 accumulation = 32 -> lr = 1e-3 * 32 / 256
    assert model.learning_rate() == pytest.approx(1e-3 * 32 / 256)


def test_a_checkpoint_never_chooses_code_to_import():
    """The registry, not a name stored in the file, decides which class rebuilds a checkpoint."""
    from mimzoo.errors import UnknownNameError
    from mimzoo.loading import Converted
    from mimzoo.methods import pretrainer

    with pytest.raises(UnknownNameError, match="no such method"):
        pretrainer(Converted({"class_path": "os.system", "method": "system", "backbone": {}}, {}))


def test_pictures_also_go_to_tensorboard(photos, tmp_path):
    """The validation picture reaches a TensorBoard logger as an image, tagged by its folder, at the global step,
    with the pixels of the PNG beside it."""
    pytest.importorskip("tensorboard")
    import io

    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(tiny_mae(blr=1e-3), loader(photos, repeats=2), val_dataloaders=torch.utils.data.DataLoader(
        [{"image": p} for p in photos[:4]], batch_size=4))
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    (image,) = events.Images("reconstructions")
    assert image.step == trainer.global_step == 1  # 16 photos, batch 16: one optimizer step
    logged = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"), dtype=np.int16)
    saved = np.asarray(Image.open(tmp_path / "reconstructions" / "epoch_0000.png").convert("RGB"), dtype=np.int16)
    assert logged.shape == saved.shape == (2 + 4 * 130, 2 + 4 * 130, 3)  # 4 rows x 4 panels of 128 px + padding
    assert np.abs(logged - saved).max() <= 1  # TensorBoard truncates to uint8 where the PNG rounds
