"""A run interrupted mid-epoch resumes from its last checkpoint at the same step, learning rate and data position."""
import lightning as L
import pytest
import torch
from PIL import Image

from mimzoo.data import ImageDataModule
from mimzoo.methods import MAE

from tiny import tiny


class Interrupt(Exception):
    pass


class Record(L.Callback):
    def __init__(self, stop_at=None):
        self.seen, self.stop_at = {}, stop_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.stop_at:
            raise Interrupt  # the checkpoint of the step before was written at its batch end
        self.seen[trainer.global_step] = (batch["index"].tolist(), trainer.optimizers[0].param_groups[0]["lr"])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for i in range(24):
        pixels = torch.randint(0, 255, (40, 40, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / f"{i:03d}.png")
    return root


def run(folder, root, stop_at=None, ckpt_path=None):
    L.seed_everything(0)
    model = tiny(MAE, backbone_kwargs={"depth": 1}, decoder_embed_dim=32, optim={"warmup_epochs": 1})
    data = ImageDataModule(data=str(folder), size=36, batch_size=4, num_workers=0, val_every=1000, repeats=1)
    record = Record(stop_at)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1,
                                               save_top_k=-1)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        callbacks=[ckpt, record], default_root_dir=root, num_sanity_val_steps=0,
                        limit_val_batches=0)
    try:
        trainer.fit(model, data, ckpt_path=ckpt_path)
    except Interrupt:
        pass
    return record.seen, trainer


def test_resume_mid_epoch_same_step_lr_and_data(folder, tmp_path):
    full, _ = run(folder, tmp_path / "full")
    steps_per_epoch = 24 // 4
    stop = steps_per_epoch + 2  # in the middle of the second epoch
    first, _ = run(folder, tmp_path / "cut", stop_at=stop)
    assert max(first) == stop - 1 and (tmp_path / "cut" / "last.ckpt").exists()
    resumed, trainer = run(folder, tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "last.ckpt"))
    assert min(resumed) == stop
    for step in resumed:
        assert resumed[step][0] == full[step][0], f"step {step}: other images than the uninterrupted run"
        assert resumed[step][1] == pytest.approx(full[step][1]), f"step {step}: other learning rate"
    assert trainer.global_step == 3 * steps_per_epoch
