"""Compile time and step time of MAE pretraining: eager, `compile=True` (the whole forward) and
`compile="regional"` (each transformer block), each in a fresh process with an empty inductor cache.

    python benchmarks/compile_time.py --model vit_base_patch16 --batch 8 [--device cuda]

The first step includes compiling; the steady figure is the mean of the next `--steps` steps (forward, backward,
AdamW), on synthetic 224 x 224 images.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("eager", "full", "regional")


def one(args) -> dict:
    import torch

    from mimzoo.methods import MAE

    torch.manual_seed(0)
    compile = {"eager": False, "full": True, "regional": "regional"}[args.mode]
    model = MAE(backbone=args.model, decoder_depth=args.decoder_depth, decoder_embed_dim=args.decoder_dim,
                decoder_num_heads=8, compile=compile).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, 224, 224, device=args.device)
    cuda = args.device.startswith("cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = model(images).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    steady = (time.perf_counter() - start) / args.steps
    return {"mode": args.mode, "first_step_s": round(first, 1), "ms_per_step": round(steady * 1e3),
            "images_per_s": round(args.batch / steady, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_base_patch16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--decoder-dim", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=MODES, default=None, help="run one mode in this process (used internally)")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one(args)))
        return
    rows = []
    for mode in MODES:
        with tempfile.TemporaryDirectory() as cache:  # nothing compiled earlier is reused
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], env=env, check=True,
                                 capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"| mode | first step (s) | ms / step | images/s |   ({args.model}, batch {args.batch}, {args.device})")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['first_step_s']} | {r['ms_per_step']} | {r['images_per_s']} |")


if __name__ == "__main__":
    main()
