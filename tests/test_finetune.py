"""MAE fine-tuning: the upstream fine-tuned checkpoint reproduces its logits; layer-wise lr decay groups match
the optimizer that main_finetune.py built; a short fit lowers the loss."""
import lightning as L
import torch

import mimzoo
from mimzoo.methods import Finetune
from mimzoo.optim import layer_decay_groups

from conftest import assert_close, load_io
from tiny import tiny


def test_finetuned_checkpoint_parity(parity_dir):
    d = parity_dir / "mae_vit"
    io = load_io(d)
    for variant, name in (("", "checkpoint.pth"), ("perturbed.", "checkpoint_perturbed.pth")):
        model = mimzoo.load(d / name, model="pretrainer")
        assert isinstance(model, Finetune)
        with torch.no_grad():
            assert_close(model(io["images"]), io[variant + "logits"], what=variant + "logits")
            feats = model.backbone.forward_head(model.backbone.forward_features(io["images"]), pre_logits=True)
            assert_close(feats, io[variant + "features"], what=variant + "features")


def test_layer_decay_groups_match_upstream_optimizer(parity_dir):
    # the saved optimizer numbers parameters group by group, so it gives (scale, decay, count) per group
    ck = torch.load(parity_dir / "mae_vit" / "checkpoint.pth", weights_only=False)
    upstream = {(round(g["lr_scale"], 9), g["weight_decay"]): len(g["params"]) for g in ck["optimizer"]["param_groups"]}
    vit = mimzoo.load(parity_dir / "mae_vit" / "checkpoint.pth")
    groups = layer_decay_groups(vit, 0.05, 0.65)
    assert {(round(g["lr_scale"], 9), g["weight_decay"]): len(g["params"]) for g in groups} == upstream
    by_name = {n: (round(g["lr_scale"], 9), g["weight_decay"]) for g in groups for n in g["names"]}
    assert by_name["cls_token"] == by_name["pos_embed"] == (round(0.65 ** 3, 9), 0.0)
    assert by_name["patch_embed.proj.weight"] == (round(0.65 ** 3, 9), 0.05)
    assert by_name["blocks.1.mlp.fc1.weight"] == (0.65, 0.05) and by_name["blocks.0.norm1.bias"] == (0.4225, 0.0)
    assert by_name["head.weight"] == (1.0, 0.05) and by_name["fc_norm.weight"] == (1.0, 0.0)


def test_finetune_fit_lowers_loss(tmp_path):
    # digits from scikit-learn, upsampled: a real 10-class problem small enough for the CPU
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:256], dtype=torch.float32)[:, None] / 16
    x = torch.nn.functional.interpolate(x, size=64, mode="nearest").repeat(1, 3, 1, 1)
    images = (x * 255).to(torch.uint8)
    labels = torch.tensor(digits.target[:256])
    data = [{"image": images[i:i + 32], "label": labels[i:i + 32]} for i in range(0, 256, 32)]

    model = tiny(Finetune, optim={"lr": 3e-3})

    def mean_loss():  # in eval mode: deterministic resize + center crop
        model.eval()
        with torch.no_grad():
            return sum(model.training_loss(model.on_after_batch_transfer(dict(b), 0)).loss for b in data) / len(data)

    before = mean_loss()
    trainer = L.Trainer(max_epochs=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert mean_loss() < 0.85 * before  # trained on random crops (train mode), measured on centre crops
