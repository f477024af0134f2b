"""Pretraining throughput (MAE, SiameseIM, SemanticMIM): mimzoo vs a plain reference, in the same run, on synthetic
images.

    python benchmarks/mae_throughput.py --model vit_base_patch16 --batch 256            # GPU
    python benchmarks/mae_throughput.py --model vit_tiny_patch16 --batch 32 --steps 10  # CPU
    python benchmarks/mae_throughput.py --method siameseim --model vit_base_patch16 --batch 128 --decoder-dim 768
    python benchmarks/mae_throughput.py --method semanticmim --model vit_base_patch16 --batch 256

A training step is forward + backward + optimizer step (no data loading). mimzoo runs as it trains: SDPA
attention, bf16 autocast and fused AdamW on GPU (fp32 on CPU), optionally torch.compile. The reference runs the
same network the way the official MAE code does: explicit softmax attention (timm 0.3.2), fp16 autocast with a
GradScaler on GPU (fp32 on CPU), the default (for-each) AdamW. Both compute the same function (the parity tests
prove the network equals the official one), so the ratio is the speed-up. SemanticMIM has no reference: upstream
(mmpretrain) already uses SDPA, so mimzoo alone is measured (8 proxies, mask ratio 0.8, HOG target).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from mimzoo.methods import MAE, SemanticMIM, SiameseIM
from mimzoo.methods.base import weight_decay_groups
from mimzoo.models.masking import block_mask
from mimzoo.views import RelativeBoxes

# dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs of one transformer block (multiply-adds x 2): qkv + proj + mlp, and the two attention matmuls."""
    return 2 * tokens * dim * dim * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * dim


def mae_step_flops(model: MAE, batch: int) -> float:
    """fwd + bwd (= 3 x fwd) FLOPs of one MAE step: encoder on the visible tokens, decoder on all of them."""
    vit, dec = model.backbone, model.decoder
    n = vit.num_patches
    keep = int(n * (1 - model.hparams.mask_ratio)) + vit.num_prefix_tokens
    p = vit.patch_embed.patch_size[0]
    d_dec = dec.embed.out_features
    fwd = (2 * n * 3 * p * p * vit.embed_dim  # patch embedding (all patches are embedded before masking)
           + len(vit.blocks) * block_flops(keep, vit.embed_dim)
           + 2 * keep * vit.embed_dim * d_dec
           + len(dec.blocks) * block_flops(n + vit.num_prefix_tokens, d_dec)
           + 2 * n * d_dec * dec.pred.out_features)
    return 3 * fwd * batch


def siameseim_step_flops(model: SiameseIM, batch: int) -> float:
    """fwd + bwd FLOPs of one SiameseIM step: the online encoder on [cls, visible], projector, predictor on
    [cls, visible, one query per patch] (x3 for the backward) and the momentum encoder + projector on the full view
    (forward only)."""
    vit, dec = model.backbone, model.decoder
    n, d, dd = vit.num_patches, vit.embed_dim, dec.embed.out_features
    keep = n - model.hparams.num_masked + 1
    p = vit.patch_embed.patch_size[0]
    embed = 2 * n * 3 * p * p * d

    def branch(tokens):  # encoder + embed + projector
        return len(vit.blocks) * block_flops(tokens, d) + 2 * tokens * d * dd + len(dec.projector) * block_flops(
            tokens, dd)

    online = (embed + branch(keep) + 2 * n * 2 * dd * dd + len(dec.predictor) * block_flops(keep + n, dd)
              + 2 * n * dd * dd)
    return (3 * online + embed + branch(n + 1)) * batch


def semanticmim_step_flops(model: SemanticMIM, batch: int) -> float:
    """fwd + bwd FLOPs of one SemanticMIM step: per depth the encoder block on [proxies, visible] and the mask-stream
    block (queries: the mask tokens; keys / values: proxies + mask tokens), then the head on the mask tokens. The
    HOG target (a few fixed convolutions, no gradient) is left out."""
    vit = model.backbone
    n, d, P, m = vit.num_patches, vit.embed_dim, vit.num_prefix_tokens, model.num_masked
    p, r = vit.patch_embed.patch_size[0], vit.blocks[0].mlp.fc1.out_features / vit.embed_dim
    depth = len(model.mask_stream.blocks)
    cross = 2 * m * d * d * (2 + 2 * r) + 2 * (P + m) * d * 2 * d + 4 * m * (P + m) * d
    fwd = (2 * n * 3 * p * p * d + len(vit.blocks) * block_flops(P + n - m, d, r) + depth * cross
           + 2 * m * d * model.head.out_features)
    return 3 * fwd * batch


def build(args, reference: bool):
    torch.manual_seed(0)
    if args.method == "siameseim":
        model = SiameseIM(backbone=args.model, decoder_embed_dim=args.decoder_dim, decoder_num_heads=args.decoder_heads,
                          compile=args.compile and not reference)
    elif args.method == "semanticmim":
        model = SemanticMIM(backbone=args.model, num_proxies=8, compile=args.compile)
    else:
        model = MAE(backbone=args.model, decoder_embed_dim=args.decoder_dim, decoder_depth=args.decoder_depth,
                    decoder_num_heads=args.decoder_heads, compile=args.compile and not reference)
    if reference:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
    return model.to(args.device).train()


def run(args, reference: bool) -> dict:
    model = build(args, reference)
    cuda = args.device.startswith("cuda")
    groups = weight_decay_groups(model, 0.05)
    if reference:
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
        dtype = torch.float16
    else:
        opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=cuda)
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and reference)
    images = torch.randn(args.batch, 3, model.backbone.patch_embed.img_size[0], model.backbone.patch_embed.img_size[1],
                         device=args.device)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda else contextlib.nullcontext()
    if args.method == "siameseim":  # fixed views: the step, not the view maker, is measured
        B, dev = args.batch, args.device
        rel = RelativeBoxes(torch.zeros(B, device=dev), torch.zeros(B, device=dev), torch.ones(B, device=dev),
                            torch.ones(B, device=dev), torch.zeros(B, dtype=torch.bool, device=dev),
                            torch.ones(B, device=dev))
        mask = block_mask(B, model.backbone.grid_size, model.hparams.num_masked).to(dev)
        images2 = torch.randn_like(images)

        def loss_of():
            model.momentum.update(model.backbone, model.decoder, 0.996)
            return model(images, images2, rel, mask).loss
    else:
        def loss_of():
            return model(images).loss

    def step():
        with autocast:
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    out = {"impl": "reference" if reference else "mimzoo" + (" (compiled)" if args.compile else ""),
           "images_per_s": round(args.batch / seconds, 1), "ms_per_step": round(seconds * 1e3, 1)}
    if cuda:
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (v for k, v in PEAK_FLOPS.items() if k in name), None)
        out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if peak:
            flops = {"siameseim": siameseim_step_flops, "semanticmim": semanticmim_step_flops}.get(args.method,
                                                                                                 mae_step_flops)
            out["mfu"] = round(flops(model, args.batch) / seconds / peak, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("mae", "siameseim", "semanticmim"), default="mae")
    p.add_argument("--model", default="vit_base_patch16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--compile", action="store_true", help="torch.compile the mimzoo step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: by name)")
    p.add_argument("--skip-reference", action="store_true")
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    cpu = f"CPU ({torch.get_num_threads()} threads)"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"# {args.method} {args.model}, batch {args.batch}, {device}, torch {torch.__version__}")
    results = [run(args, reference=False)]
    if not args.skip_reference and args.method != "semanticmim":
        results.append(run(args, reference=True))
        results[0]["speedup_vs_reference"] = round(results[0]["images_per_s"] / results[1]["images_per_s"], 2)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
