"""Training tiny cross-view models on the real scikit-image stereo pair: the loss falls, the pictures show the
reference view, checkpoints load back."""
import lightning as L
import pytest
import torch

import mimzoo
from mimzoo.methods import MIMIC, CroCo

from tiny import tiny


@pytest.fixture(scope="module")
def pairs():
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    views = []
    for img in (left, right):
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None]
        views.append(torch.nn.functional.interpolate(t, size=(48, 72), mode="area")[0].round().to(torch.uint8))
    # 8 pairs: 32 x 32 windows at the same place in both views (a real stereo correspondence)
    return [{"image": views[0][:, 8:40, x:x + 32], "image2": views[1][:, 8:40, x:x + 32]} for x in range(0, 40, 5)]


@pytest.mark.parametrize("cls", [CroCo, MIMIC])
def test_tiny_fit_lowers_loss(cls, pairs, tmp_path):
    L.seed_everything(0)
    model = tiny(cls, mask_ratio=0.75, optim={"blr": 5e-3})
    batch = model.on_after_batch_transfer({k: torch.stack([p[k] for p in pairs]) for k in pairs[0]}, 0)
    noise = torch.rand(len(pairs), 16, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        before = model(batch["image"], batch["image2"], noise).loss.item()
    trainer = L.Trainer(max_epochs=20, accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(pairs * 4, batch_size=8, shuffle=True)
    trainer.fit(model, loader, val_dataloaders=torch.utils.data.DataLoader(pairs, batch_size=8))
    model.eval()
    with torch.no_grad():
        after = model(batch["image"], batch["image2"], noise).loss.item()
    assert after < 0.8 * before, (before, after)

    from PIL import Image
    picture = sorted((tmp_path / "reconstructions").glob("*.png"))[-1]
    assert Image.open(picture).size[0] > 5 * 64  # reference | original | masked | reconstruction | pasted
    again = mimzoo.load(trainer.checkpoint_callback.best_model_path, model="pretrainer")
    assert type(again) is cls
    with torch.no_grad():
        assert torch.equal(again(batch["image"], batch["image2"], noise).pred,
                           model(batch["image"], batch["image2"], noise).pred)
