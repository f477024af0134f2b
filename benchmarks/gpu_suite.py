"""The one prepared GPU benchmark: every figure docs/benchmarks.md wants from a GPU, in one process, in under
8 minutes on one H100/H200. Writes `OUT/gpu_suite.json` (one row per entry) and `OUT/gpu_suite.md` (the table).

    python benchmarks/gpu_suite.py --out runs/gpu_suite                 # on the GPU machine
    python benchmarks/gpu_suite.py --tiny --device cpu --out /tmp/suite  # a seconds-long dry run of every entry

Entries (each a training step = forward + backward + optimizer step on views made once on the device, unless
said otherwise; images/s, ms/step, peak memory, and MFU from FLOPs counted by torch's FlopCounterMode on one step):
- MAE ViT-B/16 and ViT-L/16: mimzoo bf16 eager, mimzoo bf16 torch.compile (ViT-B also regional: each block), and
  the official structure (explicit softmax attention as timm 0.3.2, fp16 autocast + GradScaler, for-each AdamW),
  batch 256;
- CroCo v2 ViT-B (RoPE, 512 x 8 decoder, pairs), SiameseIM ViT-B, SemanticMIM ViT-B (8 proxies, HOG),
  MIM-Refiner ViT-L/16 (2 global + 10 local views, three heads), DPT depth fine-tuning ViT-B at 384 px;
- k-NN: 50,000 queries against 1.28M x 768 synthetic fp16 features (k = 20), queries/s;
- end to end from JPEG bytes (500 x 375 photos): nvjpeg decode + full-image crops + MAE ViT-B step, against the
  same step on synthetic views: the data path's cost.
Entries that would start after `--budget-s` are skipped and listed as such.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import torch

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense bf16 tensor-core peaks


def synthetic_batch(method, batch: int, size: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    img = lambda: torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)  # noqa: E731
    out = {"image": img(), "index": torch.arange(batch)}
    if method.name in ("croco", "mimic"):
        out["image2"] = img()
    if method.name == "dense_finetune":
        out["depth"] = torch.rand(batch, 1, size, size, generator=g) * 5 + 0.5
    return {k: v.to(device) for k, v in out.items()}


def reference_structure(model) -> None:
    """The official code's attention: explicit softmax (timm 0.3.2), not SDPA."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def time_training(model, views: dict, *, steps: int, warmup: int, device: str, reference: bool = False,
                  count_flops: bool = True) -> dict:
    from mimzoo.flops import flop_counter
    from mimzoo.methods.base import weight_decay_groups

    cuda = device.startswith("cuda")
    opt = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95),
                            fused=cuda and not reference)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and reference)
    dtype = torch.float16 if reference else torch.bfloat16
    autocast = torch.autocast("cuda", dtype=dtype) if cuda else contextlib.nullcontext()

    def step():
        with autocast:
            loss = model.training_loss(views).loss
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    flops = None
    if count_flops:
        counter = flop_counter()  # counts the CPU attention kernel too (the --device cpu dry runs)
        with counter:
            step()
        flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    batch = views["image"].shape[0] // (2 if model.name == "mim_refiner" else 1)
    row = {"images_per_s": round(batch / seconds, 1), "ms_per_step": round(seconds * 1e3, 2),
           "gflop_per_image": round(flops / batch / 1e9, 2) if flops else None}
    if cuda:
        row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)
        if peak and flops:
            row["mfu"] = round(flops / seconds / peak, 3)
    return row


def method_entry(name: str, cls_name: str, kwargs: dict, *, size: int, batch: int, compile: bool | str = False,
                 reference: bool = False, views_kwargs: dict | None = None):
    def run(args) -> dict:
        from mimzoo import methods

        cls = getattr(methods, cls_name)
        torch.manual_seed(0)
        extra = {"compile": compile} if compile else {}  # True or "regional"
        model = cls(**kwargs, **extra).to(args.device).train()
        if reference:
            reference_structure(model)
        views = model.on_after_batch_transfer(synthetic_batch(cls, batch, size, args.device), 0)
        return time_training(model, views, steps=args.steps, warmup=args.warmup, device=args.device,
                             reference=reference, count_flops=not compile)
    return name, run


def knn_entry(n_train: int, n_test: int, dim: int):
    def run(args) -> dict:
        from mimzoo.tasks.knn import knn_predict

        g = torch.Generator(device=args.device).manual_seed(0)
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        train = torch.nn.functional.normalize(torch.randn(n_train, dim, device=args.device, generator=g), dim=1)
        test = torch.nn.functional.normalize(torch.randn(n_test, dim, device=args.device, generator=g), dim=1)
        labels = torch.randint(0, 1000, (n_train,), device=args.device, generator=g)
        train, test = train.to(dtype), test.to(dtype)
        knn_predict(train, labels, test[:1024], k=20, num_classes=1000)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        sync()
        start = time.perf_counter()
        knn_predict(train, labels, test, k=20, num_classes=1000)
        sync()
        seconds = time.perf_counter() - start
        return {"queries_per_s": round(n_test / seconds, 1), "seconds": round(seconds, 2),
                "shape": f"{n_test} x {n_train} x {dim}"}
    return f"k-NN {n_test // 1000}k queries vs {n_train / 1e6:.2f}M x {dim}", run


def jpeg_entry(backbone: str, batch: int, size: int, photo: tuple[int, int]):
    """MAE from JPEG bytes: device decode + full-image crops + the step, vs the step alone on synthetic views."""
    def run(args) -> dict:
        from PIL import Image
        from skimage import data

        from mimzoo.data.device_decode import decode_on
        from mimzoo.data.folder import pad_images
        from mimzoo.methods import MAE

        jpegs = []
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
            buf = io.BytesIO()
            Image.fromarray(getattr(data, name)()).convert("RGB").resize(photo).save(buf, format="jpeg", quality=90)
            jpegs.append(buf.getvalue())
        encoded = [jpegs[i % len(jpegs)] for i in range(batch)]
        torch.manual_seed(0)
        model = MAE(backbone=backbone, backbone_kwargs={"img_size": size}, image_size=size).to(args.device).train()
        device = torch.device(args.device)
        synthetic = model.on_after_batch_transfer(synthetic_batch(MAE, batch, size, args.device), 0)
        alone = time_training(model, synthetic, steps=args.steps, warmup=args.warmup, device=args.device,
                              count_flops=False)

        def views_from_jpegs():
            images, sizes = pad_images(decode_on(encoded, ["bench"] * batch, device, int(size / 0.875), True))
            return model.on_after_batch_transfer({"image": images, "image_size": sizes.to(device)}, 0)

        start = time.perf_counter()
        n = max(2, args.steps // 2)
        for _ in range(n):
            views = views_from_jpegs()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        data_s = (time.perf_counter() - start) / n
        step_s = alone["ms_per_step"] / 1e3
        return {"decode_and_views_images_per_s": round(batch / data_s, 1), "step_alone_images_per_s":
                alone["images_per_s"], "end_to_end_images_per_s": round(batch / (data_s + step_s), 1),
                "end_to_end_vs_step": round(step_s / (data_s + step_s), 3), "views_shape": tuple(views["image"].shape)}
    return f"MAE {backbone} from {photo[0]}x{photo[1]} JPEG bytes (decode + views + step, serial)", run


def entries(tiny: bool) -> list:
    if tiny:  # a dry run on the CPU: the same code path, seconds
        B, L, size, big = "vit_tiny_patch16", "vit_tiny_patch16", 64, dict(depth=2)
        b, mb = 4, 2
        dec = {"decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
        knn = knn_entry(10_000, 1_000, 64)
    else:
        B, L, size, big = "vit_base_patch16", "vit_large_patch16", 224, {}
        b, mb = 256, 64
        dec = {}
        knn = knn_entry(1_281_167, 50_000, 768)
    bk = {"backbone_kwargs": {"img_size": size, **big}, "image_size": size}
    siam = {"num_masked": 9, "decoder_embed_dim": 32, "decoder_num_heads": 2, "projector_depth": 1,
            "predictor_depth": 1} if tiny else {}
    mae = lambda arch: {"backbone": arch, **bk, **dec}  # noqa: E731
    rows = []
    for arch, label in ((B, "ViT-B/16"), (L, "ViT-L/16")):
        rows += [method_entry(f"MAE {label} mimzoo bf16 eager", "MAE", mae(arch), size=size, batch=b),
                 method_entry(f"MAE {label} mimzoo bf16 compiled", "MAE", mae(arch), size=size, batch=b,
                              compile=True),
                 *([method_entry(f"MAE {label} mimzoo bf16 compiled regional", "MAE", mae(arch), size=size,
                                 batch=b, compile="regional")] if label == "ViT-B/16" else []),
                 method_entry(f"MAE {label} official structure fp16 eager", "MAE", mae(arch), size=size, batch=b,
                              reference=True)]
    croco = {"backbone": B, "backbone_kwargs": {"img_size": size, "class_token": False, "pos_embed": "rope",
                                                "global_pool": "avg", **big}, "image_size": size, **dec}
    rows += [
        method_entry("CroCo v2 ViT-B/16 (RoPE) bf16", "CroCo", croco, size=size, batch=b),
        method_entry("SiameseIM ViT-B/16 bf16", "SiameseIM", {"backbone": B, **bk, **siam}, size=size, batch=b // 2),
        method_entry("SemanticMIM ViT-B/16 (8 proxies, HOG) bf16", "SemanticMIM",
                     {"backbone": B, "backbone_kwargs": {"img_size": size, **big}, "image_size": size,
                      "num_proxies": 8}, size=size, batch=b),
        method_entry("MIM-Refiner ViT-L/16 (2 + 10 views) bf16", "MIMRefiner",
                     {"backbone": L, **bk, "head_blocks": [-1] if tiny else [15, 19, 23]}, size=size, batch=mb),
        method_entry("DPT depth fine-tuning ViT-B/16 bf16", "DenseFinetune",
                     {"backbone": B, "backbone_kwargs": {"img_size": 64 if tiny else 384, **big}, "task": "depth",
                      "image_size": 64 if tiny else 384}, size=64 if tiny else 384, batch=mb),
        knn,
        jpeg_entry(B, b, size, (500, 375)),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_suite", help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps per entry")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per entry (compiled: includes compiling)")
    p.add_argument("--budget-s", type=float, default=450, help="start no entry after this many seconds")
    p.add_argument("--tiny", action="store_true", help="tiny models and batches: a dry run of every entry")
    p.add_argument("--only", default=None, help="run the entries whose name contains this text")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device.startswith("cuda")
    machine = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    header = {"machine": machine, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "tiny": args.tiny}
    print(json.dumps(header))
    rows, start = [], time.perf_counter()
    for name, run in entries(args.tiny):
        if args.only and args.only not in name:
            continue
        if time.perf_counter() - start > args.budget_s:
            rows.append({"entry": name, "skipped": f"over the {args.budget_s:.0f} s budget"})
            continue
        t0 = time.perf_counter()
        try:
            row = {"entry": name, **run(args)}
        except Exception as e:  # one failing entry must not cost the others their GPU time
            row = {"entry": name, "error": f"{type(e).__name__}: {e}"[:300]}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    (out / "gpu_suite.json").write_text(json.dumps({**header, "rows": rows}, indent=1))
    keys = ["images_per_s", "ms_per_step", "peak_mem_gb", "mfu", "gflop_per_image"]
    lines = [f"Measured {header['date']} on {machine}, torch {header['torch']} (`python benchmarks/gpu_suite.py`)", "",
             "| entry | " + " | ".join(keys) + " | other |", "|---|" + "---|" * (len(keys) + 1)]
    for r in rows:
        other = {k: v for k, v in r.items() if k not in keys and k != "entry"}
        lines.append(f"| {r['entry']} | " + " | ".join(str(r.get(k, "")) for k in keys) + f" | {other} |")
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
