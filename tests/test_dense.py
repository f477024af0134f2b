"""Dense fine-tuning: heads, losses, segmentation metrics, augmentation and short real training runs on CPU."""
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimzoo.methods import DenseFinetune
from mimzoo.tasks.dense import berhu_loss, normal_loss, segmentation_metrics, silog_loss
from mimzoo.tasks.heads import DPTHead, default_hooks

from tiny import tiny


def dense(**kwargs) -> DenseFinetune:
    """A 4-block, 64-wide ViT at 64 px (4 x 4 patches) with a small DPT head."""
    return tiny(DenseFinetune, backbone_kwargs={"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 16,
                                                "img_size": 64}, image_size=64, hooks=None, **kwargs)


def test_default_hooks_are_multimae_and_croco_ones():
    assert default_hooks(12) == [2, 5, 8, 11]
    assert default_hooks(24) == [5, 11, 17, 23]


def test_dpt_head_matches_multimae_parameter_counts():
    """MIMIC's NYUv2 log reports 105,711,745 parameters for ViT-B + DPT depth and 105,711,811 for normals; the
    encoder without its fixed position table and final norm has 85,645,824, so the heads have 20,065,921 and
    20,065,987 (two more output channels x (32 weights + bias))."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(DPTHead(768, 1)) == 105_711_745 - 85_645_824
    assert count(DPTHead(768, 3)) == 105_711_811 - 85_645_824


@pytest.mark.parametrize("size", [(64, 64), (80, 112), (208, 208)])
def test_dpt_output_is_full_resolution_for_any_grid(size):
    head = DPTHead(32, 5, "segmentation", feature_dim=16)
    h, w = size[0] // 16, size[1] // 16
    maps = [torch.randn(2, 32, h, w) for _ in range(4)]
    assert head(maps, size).shape == (2, 5, *size)


def test_silog_loss_equals_the_formula_and_ignores_invalid_pixels():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 1, 8, 8, generator=g) + 0.5, torch.rand(2, 1, 8, 8, generator=g) * 4
    target[0, 0, :3] = 0
    valid = target.numpy() > 0
    d = np.log(pred.numpy()[valid]) - np.log(target.numpy()[valid])
    expected = 10 * np.sqrt((d ** 2).mean() - 0.85 * d.mean() ** 2)
    assert silog_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)
    # scale invariance (variance_focus 1): a global scale of the prediction costs nothing
    assert silog_loss(pred * 3, target, 1.0).item() == pytest.approx(silog_loss(pred, target, 1.0).item(), abs=1e-3)


def test_berhu_loss_equals_the_formula():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.rand(2, 1, 8, 8, generator=g) * 5, torch.rand(2, 1, 8, 8, generator=g) * 5
    target[1, 0, 4:] = 0
    valid = target.numpy() > 0
    e = np.abs(pred.numpy()[valid] - target.numpy()[valid])
    c = 0.2 * e.max()
    expected = np.where(e < c, e, (e ** 2 + c ** 2) / (2 * c)).mean()
    assert berhu_loss(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_normal_losses_on_known_angles():
    target = torch.zeros(1, 3, 2, 2)
    target[:, 2] = 1
    target[0, :, 1, 1] = 0  # invalid pixel
    pred = torch.zeros(1, 3, 2, 2)
    pred[:, 0] = 1  # 90 degrees everywhere
    assert normal_loss(pred, target, "angular").item() == pytest.approx(np.pi / 2, rel=1e-4)
    assert normal_loss(pred, target, "l1").item() == pytest.approx(2 / 3, rel=1e-6)
    assert normal_loss(target + 0.0, target, "l1").item() == 0


def test_segmentation_metrics_equal_numpy_confusion_matrix():
    g = torch.Generator().manual_seed(1)
    metric = segmentation_metrics(6)
    preds, targets = [], []
    for _ in range(3):
        pred = torch.randint(0, 5, (2, 16, 16), generator=g)  # class 5 never predicted nor present
        target = torch.randint(0, 5, (2, 16, 16), generator=g)
        target[target == 4] = 255
        metric.update(pred, target)
        preds.append(pred.numpy().ravel())
        targets.append(target.numpy().ravel())
    p, t = np.concatenate(preds), np.concatenate(targets)
    keep = t != 255
    cm = np.bincount(t[keep] * 6 + p[keep], minlength=36).reshape(6, 6)
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = inter[union > 0] / union[union > 0]  # mmseg: classes absent from both do not count
    out = metric.compute()
    assert out["miou"].item() == pytest.approx(iou.mean(), abs=1e-6)
    assert out["pixel_acc"].item() == pytest.approx(inter.sum() / keep.sum(), abs=1e-6)


def test_flip_mirrors_normals_consistently():
    model = dense(task="normals").train()
    image = torch.rand(64, 3, 4, 4)
    normal = F.normalize(torch.randn(64, 3, 4, 4), dim=1)
    torch.manual_seed(0)
    img2, n2 = model.flip(image, normal)
    flipped = (img2 != image).flatten(1).any(1)
    assert 10 < flipped.sum() < 54
    assert torch.equal(img2[flipped], image[flipped].flip(-1))
    assert torch.equal(n2[flipped][:, 0], -normal[flipped][:, 0].flip(-1))
    assert torch.equal(n2[flipped][:, 1:], normal[flipped][:, 1:].flip(-1))
    assert torch.equal(n2[~flipped], normal[~flipped])


def smooth_scene(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose depth is a known function of the picture (brighter = nearer), so a head can learn it."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 4, 4, generator=g)
    depth = 1 + 4 * F.interpolate(low, size=size, mode="bilinear", align_corners=False)
    image = ((5 - depth) / 4).repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.7, 0.4]).view(1, 3, 1, 1)
    return (image * 255).to(torch.uint8), depth


class Batches(torch.utils.data.Dataset):
    def __init__(self, images, targets, key):
        self.images, self.targets, self.key = images, targets, key

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], self.key: self.targets[i]}


@pytest.mark.parametrize("freeze", [False, True])
def test_tiny_depth_finetune_lowers_the_loss(freeze, tmp_path):
    torch.manual_seed(0)
    images, depth = smooth_scene(32, 64, seed=0)
    loader = torch.utils.data.DataLoader(Batches(images, depth, "depth"), batch_size=8, shuffle=True)
    model = dense(task="depth", freeze_backbone=freeze, optim={"lr": 5e-4}, color_jitter=None)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    val = model.on_after_batch_transfer({"image": images[:16], "depth": depth[:16]}, 0)
    with torch.no_grad():
        start = silog_loss(model.eval()(val["image"]), depth[:16]).item()
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, loader)
    with torch.no_grad():
        end = silog_loss(model.eval()(val["image"]), depth[:16]).item()
    assert end < 0.6 * start, (start, end)
    after = model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (changed == []) == freeze, changed


def test_layer_decay_and_frozen_backbone_groups():
    model = dense(task="segmentation", num_classes=3, optim={"layer_decay": 0.5})
    scales = sorted({g["lr_scale"] for g in model.optimizer_groups() if "lr_scale" in g})
    # embeddings 0.5^5 ... last block 0.5^1 (the unread final norm is frozen); the head's groups have the full lr
    assert scales == [0.5 ** k for k in range(5, 0, -1)]
    frozen = dense(task="segmentation", num_classes=3, freeze_backbone=True)
    params = [p for g in frozen.optimizer_groups() for p in g["params"]]
    trainable_head = [p for p in frozen.head.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in trainable_head} and len(params) == len(trainable_head)


def test_segmentation_and_normals_validation_report_their_metrics(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (4, 3, 64, 64), dtype=torch.uint8, generator=g)
    for task, key, target in [("segmentation", "mask", torch.randint(0, 3, (4, 64, 64), generator=g)),
                              ("normals", "normal", F.normalize(torch.randn(4, 3, 64, 64, generator=g), dim=1))]:
        model = dense(task=task, num_classes=3 if task == "segmentation" else None)
        loader = torch.utils.data.DataLoader(Batches(images, target, key), batch_size=2)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path)
        metrics = trainer.validate(model, loader, verbose=False)[0]
        expected = {"val/miou", "val/pixel_acc"} if task == "segmentation" else {"val/mean", "val/median", "val/pct_30"}
        assert expected <= set(metrics), metrics


def test_zoo_backbone_weights_load_and_checkpoint_round_trips(parity_dir, tmp_path):
    """`backbone:` takes any checkpoint `mimzoo.load` reads (here a real-format MAE encoder), resized to the task's
    input; the fine-tuned Lightning checkpoint loads back through mimzoo.load with identical predictions."""
    import mimzoo

    source = parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth"
    model = DenseFinetune(task="depth", weights=str(source), image_size=96, feature_dim=32).eval()
    assert model.hooks == [0, 0, 0, 1]  # a 2-block encoder
    reference = mimzoo.load(source)
    blocks = {k: v for k, v in model.backbone.state_dict().items() if k.startswith("blocks.")}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in blocks.items())
    assert model.backbone.pos_embed.shape[1] == 1 + 36  # 96 px / 16 = 6 x 6 patches + cls
    images = torch.randn(2, 3, 96, 96)
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "depth.ckpt")
    again = mimzoo.load(tmp_path / "depth.ckpt", model="pretrainer")
    assert isinstance(again, DenseFinetune)
    with torch.no_grad():
        assert torch.equal(again(images), model(images))


def test_validation_writes_prediction_pictures(tmp_path):
    images, depth = smooth_scene(4, 64, seed=1)
    depth[:, :, :8] = 0  # invalid rows are drawn black
    model = dense(task="depth")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    loader = torch.utils.data.DataLoader(Batches(images, depth, "depth"), batch_size=4)
    trainer.fit(model, loader, loader)
    from PIL import Image

    picture = np.asarray(Image.open(tmp_path / "predictions" / "epoch_0000.png"))
    assert picture.shape == (4 * 66 + 2, 3 * 66 + 2, 3)
    target_tile = picture[2:66, 68:132]
    assert target_tile[:8].max() == 0 and target_tile[8:].mean() > 10


@pytest.mark.parametrize("family", ["mae_pretrain/checkpoint_released_encoder.pth", "croco_v2/checkpoint.pth",
                                    "croco/checkpoint.pth", "mim_refiner/d2v2_postnorm/checkpoint.pth",
                                    "siameseim/checkpoint.pth", "mae_pretrain/mimic_multiview/checkpoint.pth"])
def test_every_backbone_family_gets_dense_heads_at_a_new_resolution(parity_dir, family):
    """Cls token or not, sin-cos / learned tables or RoPE, pre- or post-norm blocks: each upstream format becomes a
    DPT depth model and linear and ConvNeXt-adapter segmentation models at 128 px, and the backbone computes what
    mimzoo.load's does."""
    import mimzoo

    path = parity_dir / family
    hints = {"num_heads": 3} if family.startswith("siameseim") else {}  # its weights cannot show the head count
    reference = mimzoo.load(path, img_size=128, **hints)
    for task, head in [("depth", "dpt"), ("segmentation", "linear"), ("segmentation", "convnext")]:
        model = DenseFinetune(task=task, head=head, num_classes=4, weights=str(path), backbone_kwargs=hints,
                              image_size=128, feature_dim=16, drop_path_rate=0.0).eval()
        images = torch.randn(1, 3, 128, 128)
        with torch.no_grad():
            out = model(images)
            assert torch.allclose(model.backbone.forward_features(images), reference.forward_features(images))
        assert out.shape == (1, 1 if task == "depth" else 4, 128, 128) and torch.isfinite(out).all()


def test_backbone_kwargs_must_agree_with_loaded_weights(parity_dir):
    source = str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth")
    model = DenseFinetune(task="depth", weights=source, backbone_kwargs={"depth": 2, "embed_dim": 192},
                          image_size=64, feature_dim=16)
    assert len(model.backbone.blocks) == 2
    with pytest.raises(ValueError, match=r"depth=4 \(the file has 2\) contradicts the architecture"):
        DenseFinetune(task="depth", weights=source, backbone_kwargs={"depth": 4}, image_size=64)
    with pytest.raises(ValueError, match="names a checkpoint, not an architecture: pass it as weights="):
        DenseFinetune(task="depth", backbone="mae_vit_base_patch16")


def test_scale_crop_is_an_exact_crop_at_scale_one_and_pads_as_invalid():
    from mimzoo.tasks.dense import scale_crop

    torch.manual_seed(0)
    images = torch.randn(16, 3, 8, 12)
    depth = torch.rand(16, 1, 8, 12) + 1
    out, out_depth = scale_crop(images, depth, (8, 8), (1.0, 1.0), "depth")
    offsets = set()
    for b in range(16):
        ox = [o for o in range(5) if torch.allclose(out[b], images[b, :, :, o:o + 8], atol=1e-5)]
        assert len(ox) == 1 and torch.equal(out_depth[b], depth[b, :, :, ox[0]:ox[0] + 8])
        offsets.add(ox[0])
    assert len(offsets) >= 3  # the window moves
    labels = torch.randint(0, 5, (16, 8, 12))
    small, small_labels = scale_crop(images, labels, (16, 16), (0.5, 0.5), "mask")
    assert small.shape == (16, 3, 16, 16) and small_labels.shape == (16, 16, 16)
    # half size: a 4 x 6 image at the top left, the rest is padding (ignored labels, zero image)
    assert (small_labels[:, 4:] == 255).all() and (small_labels[:, :, 6:] == 255).all()
    assert (small[:, :, 4:] == 0).all() and set(small_labels[:, :4, :6].unique().tolist()) <= set(range(5))
    _, big_labels = scale_crop(images, labels, (8, 8), (2.0, 2.0), "mask")
    assert set(big_labels.unique().tolist()) <= set(range(5))  # nearest: only original labels, no padding


@pytest.mark.parametrize("head, norm_last_hook", [("dpt", False), ("dpt", True), ("convnext", False),
                                                  ("linear", False)])
def test_every_trainable_parameter_gets_a_gradient(head, norm_last_hook):
    """What DDP needs without find_unused_parameters: the final norm is trained only when the head reads it."""
    model = dense(task="segmentation", num_classes=3, head=head, norm_last_hook=norm_last_hook)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    model.loss(model(images), labels).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.backbone.norm.weight.requires_grad == (head == "linear" or norm_last_hook)


def test_a_loaded_backbone_trains_in_train_mode(parity_dir, tmp_path):
    """mimzoo.load returns eval-mode modules and Lightning keeps the modes it finds: the method switches itself to
    train mode at fit start, or drop path would silently stay off."""
    modes = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            modes.append((module.backbone.training, module.backbone.blocks[0].drop_path1.training))

    model = DenseFinetune(task="depth", weights=str(parity_dir / "mae_pretrain" / "checkpoint_released_encoder.pth"),
                          image_size=32, feature_dim=16, drop_path_rate=0.1).eval()  # as mimzoo.load returns it
    assert not model.backbone.training
    images, depth = smooth_scene(4, 32, seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
                        default_root_dir=tmp_path)
    trainer.fit(model, torch.utils.data.DataLoader(Batches(images, depth, "depth"), batch_size=2))
    assert modes == [(True, True), (True, True)]
