"""Images/s per CPU core of the data path's decode step: JPEG bytes -> uint8 image at the training size.

Compares, in one process with one thread each (one loader worker's view):
  pil       PIL decode of the full image, then antialiased bicubic resize (mimzoo's path before 2026-12-04)
  pil-draft PIL with JPEG DCT-domain downscaling (`Image.draft`) to the smallest scale >= the target, then resize
  torchvision  `torchvision.io.decode_jpeg` on the CPU, then antialiased bicubic `F.interpolate`
  opencv    `cv2.imdecode` (with IMREAD_REDUCED_* when it stays >= the target), then `cv2.resize` (INTER_AREA)
  mimzoo    `mimzoo.data.images.decode_image` as the loaders call it (OpenCV's path for complete RGB JPEGs)
for `--mode square` (shorter side to --size, centre crop) and `--mode full` (shorter side to --size, aspect kept),
on JPEGs made from scikit-image's sample photos at --width x --height (500 x 375: a typical ImageNet photo).

    python benchmarks/decode_throughput.py --width 500 --height 375 --size 256
"""
from __future__ import annotations

import argparse
import io
import json
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from mimzoo.data.images import decode_image, full_uint8, open_image, square_uint8


def photos(width: int, height: int, count: int = 8) -> list[bytes]:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
             "astronaut", "coffee"]
    out = []
    for name in names[:count]:
        img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="jpeg", quality=90)
        out.append(buf.getvalue())
    return out


def target(w: int, h: int, size: int) -> tuple[int, int]:
    scale = size / min(w, h)
    return max(size, round(w * scale)), max(size, round(h * scale))


def centre(x: np.ndarray, size: int) -> np.ndarray:
    h, w = x.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return x[top:top + size, left:left + size]


def pil(data: bytes, size: int, mode: str) -> torch.Tensor:
    image = open_image(data)
    return full_uint8(image, size) if mode == "full" else square_uint8(image, size)


def mimzoo_path(data: bytes, size: int, mode: str) -> torch.Tensor:
    return decode_image(data, size, full=mode == "full")


def pil_draft(data: bytes, size: int, mode: str) -> torch.Tensor:
    image = Image.open(io.BytesIO(data))
    w, h = image.size
    tw, th = target(w, h, size)
    image.draft("RGB", (tw, th))  # JPEG scales 1/2, 1/4, 1/8 while the result stays >= (tw, th)
    image.load()
    return full_uint8(image, size) if mode == "full" else square_uint8(image, size)


def tv(data: bytes, size: int, mode: str) -> torch.Tensor:
    x = torchvision.io.decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=torchvision.io.ImageReadMode.RGB)
    h, w = x.shape[-2:]
    tw, th = target(w, h, size)
    x = F.interpolate(x[None].float(), size=(th, tw), mode="bicubic", antialias=True, align_corners=False)[0]
    x = x.round().clamp(0, 255).to(torch.uint8)
    if mode == "full":
        return x
    top, left = (th - size) // 2, (tw - size) // 2
    return x[:, top:top + size, left:left + size]


def opencv(data: bytes, size: int, mode: str) -> torch.Tensor:
    buf = np.frombuffer(data, dtype=np.uint8)
    w, h = Image.open(io.BytesIO(data)).size  # the header only
    tw, th = target(w, h, size)
    flag = next((f for k, f in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)) if w // k >= tw and h // k >= th), cv2.IMREAD_COLOR)
    x = cv2.imdecode(buf, flag)
    x = cv2.cvtColor(cv2.resize(x, (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    if mode == "square":
        x = centre(x, size)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)


DECODERS = {"pil": pil, "pil-draft": pil_draft, "torchvision": tv, "opencv": opencv, "mimzoo": mimzoo_path}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0, help="time per decoder and mode")
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    data = photos(args.width, args.height)
    rows = []
    for mode in ("square", "full"):
        reference = [pil(d, args.size, mode).float() for d in data]
        for name, fn in DECODERS.items():
            fn(data[0], args.size, mode)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                fn(data[n % len(data)], args.size, mode)
                n += 1
            rate = n / (time.perf_counter() - start)
            diff = max((fn(d, args.size, mode).float() - r).abs().mean().item() for d, r in zip(data, reference))
            rows.append({"mode": mode, "decoder": name, "images_per_s_per_core": round(rate, 1),
                         "mean_abs_diff_vs_pil": round(diff, 2)})
            print(json.dumps(rows[-1]))
    print("| mode | decoder | images/s per core | mean |diff| vs PIL (0-255) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['decoder']} | {r['images_per_s_per_core']} | {r['mean_abs_diff_vs_pil']} |")


if __name__ == "__main__":
    main()
