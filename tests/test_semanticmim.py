"""SemanticMIM files (mmengine Runner checkpoints of upstream's MaskFeatOurs / BEiTOurs): read without running any
pickled code, converted strictly, and the downstream backbone equal to upstream's VisionTransformerOurs /
BEiTViTOurs on the shared fixtures (plain and perturbed weights)."""
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import load_file

import mimzoo
from mimzoo.checkpoint import CheckpointReadError, read
from mimzoo.errors import Error


@pytest.mark.parametrize("variant, proxies", [("maskfeat", 8), ("beit", 1)])
@pytest.mark.parametrize("perturbed", [False, True])
def test_downstream_backbone_equals_upstream(parity_dir, variant, proxies, perturbed):
    folder = parity_dir / "semanticmim" / variant
    io = load_file(folder / "io.safetensors")
    pre = "perturbed." if perturbed else ""
    vit = mimzoo.load(folder / f"checkpoint{'_perturbed' if perturbed else ''}.pth")
    assert vit.num_prefix_tokens == proxies and vit.reg_token is None if proxies == 1 else vit.reg_token.shape[1] == 7
    with torch.no_grad():
        tokens = vit.forward_features(io["images"])
        pooled = vit.forward_head(tokens)
    torch.testing.assert_close(tokens, io[pre + "downstream_raw"], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, io[pre + "downstream_avg_featmap"], atol=1e-5, rtol=0)
    # upstream's other pooling: ln2 (the identity fc_norm) of the mean of the proxies
    torch.testing.assert_close(vit.fc_norm(tokens[:, :proxies].mean(1)), io[pre + "downstream_cls_token"],
                               atol=1e-5, rtol=0)


def test_mmengine_checkpoint_reads_with_inert_stand_ins(parity_dir):
    ckpt = read(parity_dir / "semanticmim" / "maskfeat" / "checkpoint.pth")
    assert set(ckpt) == {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"}
    buffer = ckpt["message_hub"]["log_scalars"]["train/lr"]
    assert type(buffer).__name__ == "HistoryBuffer" and type(buffer).__module__ == "mimzoo.checkpoint"
    assert "mmengine" not in __import__("sys").modules
    converted = mimzoo.loading.read(parity_dir / "semanticmim" / "maskfeat" / "checkpoint.pth")
    assert converted.config["format"] == "semanticmim" and converted.config["num_proxies"] == 8
    assert converted.config["backbone"]["num_heads"] == 3  # from the mmengine config text: 96 wide is no table entry


class Planted:
    """Pickles as a call of os.system: what a malicious file hides among the log objects."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_object_next_to_the_weights_never_runs(parity_dir, tmp_path):
    ckpt = read(parity_dir / "semanticmim" / "maskfeat" / "checkpoint.pth")
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pth"
    torch.save({**{k: v for k, v in ckpt.items() if k != "message_hub"}, "message_hub": {"planted": Planted(marker)}},
               bad, pickle_module=pickle)
    assert zipfile.is_zipfile(bad)
    with pytest.raises(CheckpointReadError, match="refused"):
        read(bad)
    with pytest.raises(Error):
        mimzoo.load(bad)
    assert not marker.exists()


def test_pretrainer_parts_are_accounted_for(parity_dir):
    converted = mimzoo.loading.read(parity_dir / "semanticmim" / "beit" / "checkpoint_perturbed.pth")
    sd = converted.state_dict
    assert converted.config["contents"] == "pretrainer" and converted.config["target"] == "tokens"
    assert {"mask_stream.mask_token", "mask_stream.norm.weight", "head.weight"} <= set(sd)
    # BEiT: q_bias / v_bias with no k bias -> the k third of the fused bias is zero
    bias = sd["backbone.blocks.0.attn.qkv.bias"]
    assert torch.equal(bias[96:192], torch.zeros(96)) and bias[:96].abs().sum() > 0
    method = mimzoo.load(parity_dir / "semanticmim" / "beit" / "checkpoint_perturbed.pth", model="pretrainer")
    assert (method.hparams.target, method.hparams.vocab_size, method.num_masked) == ("tokens", 512, 118)


@pytest.mark.parametrize("variant", ["maskfeat", "beit"])
@pytest.mark.parametrize("perturbed", [False, True])
def test_two_streams_equal_upstream_per_depth(parity_dir, variant, perturbed):
    """Proxies + visible patches through the encoder blocks, mask tokens through the second stack (attending to
    the same depth's proxies and to each other), the final norm on all groups, the head on the mask tokens."""
    import torch.nn.functional as F

    from mimzoo.loading import backbone
    from mimzoo.models.semanticmim import MaskStream, two_streams

    folder = parity_dir / "semanticmim" / variant
    io = load_file(folder / "io.safetensors")
    pre = "perturbed." if perturbed else ""
    converted = mimzoo.loading.read(folder / f"checkpoint{'_perturbed' if perturbed else ''}.pth")
    vit, cfg, beit = backbone(converted), converted.config["backbone"], variant == "beit"
    stream = MaskStream(cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["mlp_ratio"], cfg["init_values"], beit)
    stream.load_state_dict({k[len("mask_stream."):]: v for k, v in converted.state_dict.items()
                            if k.startswith("mask_stream.")}, strict=True)
    mask = io["mask"].flatten(1).bool()
    with torch.no_grad():
        out = two_streams(vit, stream.eval(), io["images"], mask)
    got = {"final_norm_all": out.normed, "backbone_out": out.normed[:, -int(mask[0].sum()):]}
    for i, (proxies, image, masked) in enumerate(out.per_depth):
        got.update({f"depth{i}_proxy": proxies, f"depth{i}_img": image, f"depth{i}_mask": masked})
    head = F.linear(got["backbone_out"], converted.state_dict["head.weight"], converted.state_dict["head.bias"])
    got["logits" if beit else "pred"] = head
    for name, value in got.items():
        torch.testing.assert_close(value, io[pre + name], atol=1e-5, rtol=0, msg=name)
    if beit:  # the CE head on a stand-in target (no DALL-E weights): mean over the masked positions
        labels = io["target_ids"].flatten(1)[mask].long()
        loss = F.cross_entropy(head.flatten(0, 1), labels)
        torch.testing.assert_close(loss, io[pre + "loss_onehot_target"], atol=1e-5, rtol=0)
    else:
        loss = F.mse_loss(head, io["hog_target"])
        torch.testing.assert_close(loss, io[pre + "loss"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("perturbed", [False, True])
def test_method_from_the_upstream_file_gives_upstreams_prediction_target_and_loss(parity_dir, perturbed):
    from mimzoo.methods import SemanticMIM

    folder = parity_dir / "semanticmim" / "maskfeat"
    io = load_file(folder / "io.safetensors")
    pre = "perturbed." if perturbed else ""
    model = SemanticMIM(weights=str(folder / f"checkpoint{'_perturbed' if perturbed else ''}.pth")).eval()
    assert model.hparams.num_proxies == 8 and model.num_masked == 157
    with torch.no_grad():
        out = model(io["images"], io["mask"])  # (B, h, w) mask, 1 = masked
    torch.testing.assert_close(out.target, io["hog_target"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pred, io[pre + "pred"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, io[pre + "loss"], atol=1e-5, rtol=0)


class FixedTokens(torch.nn.Module):
    """A stand-in tokenizer (DALL-E's dVAE cannot be downloaded here): the fixture's token ids."""

    def __init__(self, ids):
        super().__init__()
        self.ids = ids

    def forward(self, images):
        return self.ids


def test_beit_variant_token_targets_through_a_tokenizer(parity_dir):
    from mimzoo.errors import ConfigError
    from mimzoo.methods import SemanticMIM

    folder = parity_dir / "semanticmim" / "beit"
    io = load_file(folder / "io.safetensors")
    ids = io["target_ids"].flatten(1).long()
    model = SemanticMIM(weights=str(folder / "checkpoint_perturbed.pth"), target="tokens", vocab_size=512,
                        mask_ratio=0.6, tokenizer=FixedTokens(ids)).eval()
    with torch.no_grad():
        out = model(io["images"], io["mask"])
    torch.testing.assert_close(out.pred, io["perturbed.logits"], atol=1e-5, rtol=0)
    assert torch.equal(out.target, ids[io["mask"].flatten(1).bool()].reshape(2, -1))
    torch.testing.assert_close(out.loss, io["perturbed.loss_onehot_target"], atol=1e-5, rtol=0)
    bare = SemanticMIM(weights=str(folder / "checkpoint.pth"), target="tokens", vocab_size=512, mask_ratio=0.6)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        bare(io["images"], io["mask"])
    with pytest.raises(ConfigError, match="num_proxies=8 but the backbone has 1"):
        SemanticMIM(weights=str(folder / "checkpoint.pth"), num_proxies=8, target="pixels")


def test_streams_see_what_the_paper_says():
    """Proxies and image tokens never see the mask tokens (two streams); the baseline's mask tokens see the image."""
    from tiny import tiny

    model = tiny("semanticmim").eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    from mimzoo.models.semanticmim import two_streams

    with torch.no_grad():
        before = two_streams(model.backbone, model.mask_stream, images, mask)
        model.mask_stream.mask_token.add_(1.0)
        after = two_streams(model.backbone, model.mask_stream, images, mask)
        for (p0, i0, m0), (p1, i1, m1) in zip(before.per_depth, after.per_depth):
            assert torch.equal(p0, p1) and torch.equal(i0, i1) and not torch.allclose(m0, m1)
        baseline = tiny("semanticmim", bottleneck=False).eval()
        pixels = tiny("semanticmim", target="pixels")
        out = pixels(images, mask)
    assert out.pred.shape == out.target.shape == (2, 3, 16 * 16 * 3) and torch.isfinite(out.loss)
    assert not hasattr(baseline.mask_stream, "blocks") or len(baseline.mask_stream.blocks) == 0
    with torch.no_grad():
        a = baseline(images, mask).pred
        b = baseline(images + torch.randn_like(images), mask).pred
    assert not torch.allclose(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["hog", "pixels"])
def test_the_training_forward_traces_as_one_graph(target):
    """What `compile=True` compiles: both streams, the target and the loss in one graph (no host sync)."""
    from mimzoo.methods.semanticmim import random_mask

    from tiny import tiny

    model = tiny("semanticmim", target=target).train()
    images = torch.randn(2, 3, 32, 32)
    mask = random_mask(torch.rand(2, model.backbone.num_patches), model.num_masked)
    explained = torch._dynamo.explain(model._forward)(images, mask)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


@pytest.mark.parametrize("variant, proxies", [("maskfeat", 8), ("beit", 1)])
@pytest.mark.parametrize("perturbed", [False, True])
def test_pretraining_encoder_unmasked_equals_upstream(parity_dir, variant, proxies, perturbed):
    """Upstream's VOC linear segmentation reads `backbone(x, None, None)`: every patch, with the pretraining
    final norm that the downstream backbone drops. Both ways mimzoo gives it, and the dense linear head's map."""
    from mimzoo.methods import DenseFinetune, SemanticMIM

    folder = parity_dir / "semanticmim" / variant
    io = load_file(folder / "io.safetensors")
    expected = io[("perturbed." if perturbed else "") + "pretrain_backbone_unmasked"]
    file = folder / f"checkpoint{'_perturbed' if perturbed else ''}.pth"
    vit = mimzoo.load(file, pretraining_norm=True)
    kwargs = {"target": "tokens", "vocab_size": 512} if variant == "beit" else {}
    method = SemanticMIM(weights=str(file), **kwargs).eval()
    dense = DenseFinetune(weights=str(file), task="segmentation", num_classes=3, head="linear", image_size=224,
                          backbone_kwargs={"pretraining_norm": True}).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(io["images"]), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(method.unmasked_tokens(io["images"]), expected, atol=1e-5, rtol=0)
        (fmap,) = dense.features(io["images"])  # (B, D, 14, 14): every prefix token skipped
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), expected[:, proxies:], atol=1e-5, rtol=0)
    with pytest.raises(Error, match="holds no separate pretraining norm"):
        mimzoo.load(parity_dir / "mae_pretrain" / "checkpoint.pth", pretraining_norm=True)


def test_downstream_protocols_skip_every_proxy(parity_dir):
    """Fine-tuning and probe poolings on a P = 8 backbone: patch averages leave out all 8 proxies, 'proxies'
    is upstream's cls_token feature, the fine-tuning classifier reads upstream's avg_featmap."""
    from mimzoo.cli import zoo_parser
    from mimzoo.methods import Finetune
    from mimzoo.tasks.pooling import POOLINGS, pooled

    folder = parity_dir / "semanticmim" / "maskfeat"
    io = load_file(folder / "io.safetensors")
    vit = mimzoo.load(folder / "checkpoint_perturbed.pth")
    tune = Finetune(weights=str(folder / "checkpoint_perturbed.pth"), num_classes=5, image_size=224).eval()
    with torch.no_grad():
        avg, proxies = pooled(vit, io["images"], "avg"), pooled(vit, io["images"], "proxies")
        default = pooled(vit, io["images"], "default")
        tuned = tune.backbone.forward_head(tune.backbone.forward_features(io["images"]), pre_logits=True)
    raw = io["perturbed.downstream_raw"]
    torch.testing.assert_close(avg, raw[:, 8:].mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(proxies, io["perturbed.downstream_cls_token"], atol=1e-5, rtol=0)
    torch.testing.assert_close(default, io["perturbed.downstream_avg_featmap"], atol=1e-5, rtol=0)
    torch.testing.assert_close(tuned, io["perturbed.downstream_avg_featmap"], atol=1e-5, rtol=0)
    choices = next(a for a in zoo_parser()._subparsers._group_actions[0].choices["probe"]._actions
                   if a.dest == "pooling").choices
    assert tuple(choices) == POOLINGS


def test_proxy_attention_is_the_blocks_own_softmax():
    """The maps are the attention weights timm's (unfused) attention computes in the last block: captured there
    by a hook, averaged over heads, the proxies' rows over the patch columns."""
    from tiny import tiny

    model = tiny("semanticmim").eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    attn = model.backbone.blocks[-1].attn
    seen = []
    hook = attn.attn_drop.register_forward_hook(lambda module, args, out: seen.append(out))
    attn.fused_attn = False
    with torch.no_grad():
        maps = model.proxy_attention(images)
        model.backbone.forward_features(images)
    hook.remove()
    P = model.hparams.num_proxies
    assert maps.shape == (3, P, 2, 2)
    torch.testing.assert_close(maps, seen[-1].mean(1)[:, :P, P:].reshape(3, P, 2, 2))
    assert (maps.flatten(2).sum(-1) < 1).all()  # the rest of each row goes to the proxies themselves


def test_validation_writes_the_proxies_attention_picture(tmp_path):
    import lightning as L
    from PIL import Image

    from mimzoo.methods.pictures import attention_picture

    from tiny import tiny

    model = tiny("semanticmim")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader([{"image": im} for im in images], batch_size=4)
    trainer = L.Trainer(max_epochs=1, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, loader, loader)
    (picture,) = (tmp_path / "attention").glob("epoch_*.png")
    P = model.hparams.num_proxies
    with Image.open(picture) as im:  # one row per image: the image and one map per proxy, 128 px tiles
        assert im.size == ((1 + P) * 130 + 2, 4 * 130 + 2)
    grid = attention_picture(torch.zeros(1, 3, 32, 32), torch.rand(1, P, 2, 2), (0.5,) * 3, (0.5,) * 3)
    assert grid.shape == (3, 132, (1 + P) * 130 + 2)
