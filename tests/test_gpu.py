"""CUDA paths (bf16 autocast, fused AdamW, torch.compile): run with `pytest -m gpu` on a machine with a GPU."""
import contextlib

import lightning as L
import pytest
import torch

from mimzoo.methods import MAE, CroCo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@contextlib.contextmanager
def sync_is_an_error():
    """Any host-device synchronisation inside raises (a .item(), a boolean-mask index, a copy to the CPU)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def small(cls, **kw):
    """ViT-S/16 (4 blocks) at 224 px: big enough for the bf16 and fused paths to matter."""
    return cls(backbone="vit_small_patch16", backbone_kwargs={"depth": 4}, decoder_embed_dim=128, decoder_depth=2,
               decoder_num_heads=4, optim={"warmup_epochs": 0}, **kw)


@pytest.mark.parametrize("compile", [False, True])
def test_mae_bf16_fused_training_matches_fp32(compile):
    torch.manual_seed(0)
    model = small(MAE, compile=compile).cuda()
    images = torch.randn(8, 3, 224, 224, device="cuda")
    noise = torch.rand(8, 196, device="cuda")
    with torch.no_grad():
        fp32 = model(images, noise).loss
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(images, noise).loss
    assert abs(fp32.item() - bf16.item()) < 0.02 * fp32.item()


def test_lightning_bf16_fit_on_gpu(tmp_path):
    L.seed_everything(0)
    model = small(CroCo)
    data = [{"image": torch.randint(0, 255, (3, 256, 256), dtype=torch.uint8),
             "image2": torch.randint(0, 255, (3, 256, 256), dtype=torch.uint8)} for _ in range(16)]
    trainer = L.Trainer(max_steps=4, accelerator="gpu", devices=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.global_step == 4
    assert trainer.optimizers[0].defaults.get("fused")


@pytest.mark.parametrize("task", ["depth", "segmentation", "normals"])
def test_dense_finetune_bf16_on_gpu(task, tmp_path):
    from mimzoo.methods import DenseFinetune

    L.seed_everything(0)
    model = DenseFinetune(task=task, num_classes=5, backbone="vit_small_patch16", backbone_kwargs={"depth": 4},
                          image_size=224, optim={"warmup_epochs": 0})
    key = {"depth": "depth", "segmentation": "mask", "normals": "normal"}[task]
    target = {"depth": lambda: torch.rand(1, 224, 224) * 5, "segmentation": lambda: torch.randint(0, 5, (224, 224)),
              "normals": lambda: torch.nn.functional.normalize(torch.randn(3, 224, 224), dim=0)}[task]
    data = [{"image": torch.randint(0, 255, (3, 224, 224), dtype=torch.uint8), key: target()} for _ in range(8)]
    trainer = L.Trainer(max_steps=3, accelerator="gpu", devices=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, limit_val_batches=1, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    trainer.fit(model, loader, loader)
    assert trainer.global_step == 3 and torch.isfinite(trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize("task", ["depth", "segmentation", "normals"])
def test_dense_training_loss_has_no_host_sync(task):
    from mimzoo.methods import DenseFinetune

    model = DenseFinetune(task=task, num_classes=5, backbone="vit_small_patch16", backbone_kwargs={"depth": 2},
                          image_size=224, depth_loss="berhu" if task == "depth" else "silog").cuda().train()
    key = {"depth": "depth", "segmentation": "mask", "normals": "normal"}[task]
    target = {"depth": torch.rand(2, 1, 224, 224), "segmentation": torch.randint(0, 5, (2, 224, 224)),
              "normals": torch.nn.functional.normalize(torch.randn(2, 3, 224, 224), dim=1)}[task]
    batch = {"image": torch.randn(2, 3, 224, 224, device="cuda"), key: target.cuda()}
    with sync_is_an_error():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.training_loss(batch).loss
        loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", ["mae", "croco", "mimic", "siameseim", "mim_refiner", "semanticmim", "finetune",
                                  "linear_probe", "dense_finetune"])
def test_no_host_sync_in_any_training_step(name):
    """Views on the device (from a uint8 batch), the training loss and its backward, for every registered method,
    under `set_sync_debug_mode("error")`: a .item(), a boolean mask index or a CPU copy raises."""
    from test_methods import SPECS

    from tiny import tiny

    model = tiny(name).cuda().train()
    batch = {k: v.cuda() for k, v in SPECS[name].batch(4).items()}
    with sync_is_an_error():
        views = model.on_after_batch_transfer(batch, 0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.training_loss(views).loss
        loss.backward()
    assert torch.isfinite(loss)
