"""bench.md (a leaderboard per dataset and protocol) and bench.png (accuracy against GFLOPs per image, the MIM
survey's compute-accuracy trade-off) from the rows of bench.json. Rows whose probe settings or data differ are
never put in one table or panel. Drawn with PIL, which mimzoo already needs, rather than adding matplotlib."""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import atomic_path

PANEL = (600, 440)  # one panel's size in pixels
MIN_SPAN = 10.0  # accuracy points the y axis spans at least
MARGIN = {"left": 70, "right": 30, "top": 44, "bottom": 56}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
SETTING_NAMES = {"ks": "k", "temperature": "T", "probe_batch_size": "batch", "warmup_epochs": "warm-up",
                 "preprocess_test": "preprocess test", "lambd": "lambda"}


def groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The finished rows by (data, probe, settings): each group is one protocol."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            out.setdefault((r["data"], r["probe"], json.dumps(r["settings"], sort_keys=True)), []).append(r)
    return out


def headline(probe: str, settings: dict) -> str:
    """The metric a leaderboard sorts by and the picture plots: the first k, top-1, the fewest shots."""
    return {"knn": f"knn{settings.get('ks', [20])[0]}_top1", "linear": "linear_top1",
            "fewshot": f"{min(settings.get('shots', [1]))}shot_top1_mean"}[probe]


def short(name: str) -> str:
    """A zoo name as it is; a path by its last two parts (checkpoint files are often all 'checkpoint.pth')."""
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else name


def protocol_title(data: str, probe: str, settings: dict) -> str:
    said = []
    for k, v in settings.items():
        v = ", ".join(map(str, v)) if isinstance(v, list) else v
        said.append(f"{SETTING_NAMES.get(k, k.replace('_', ' '))} {v}")
    return f"{Path(data).name if data != 'digits' else data} · {probe} ({' · '.join(said)})"


def by_model(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """{(model, asked size): {metric: row}} of one group."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["model"], r.get("size_asked")), {})[r["metric"]] = r
    return out


def labels(rows: list[dict]) -> dict[tuple, str]:
    """A short name per (model, asked size) of a group: paths by as many trailing parts as tell them apart (two
    runs' checkpoints/last.ckpt), "@size" where a model is there at several sizes."""
    models = sorted({r["model"]: r["name"] for r in rows}.items())
    parts = {m: Path(name).parts if Path(name).parts else (name,) for m, name in models}
    keep = {m: 2 for m in parts}
    while True:
        named = {m: "/".join(parts[m][-keep[m]:]) for m in parts}
        clash = {m for m in parts if list(named.values()).count(named[m]) > 1 and keep[m] < len(parts[m])}
        if not clash:
            break
        for m in clash:
            keep[m] += 1
    sizes: dict[str, set] = {}
    for r in rows:
        sizes.setdefault(r["model"], set()).add(r.get("size_asked"))
    return {(r["model"], r.get("size_asked")): named[r["model"]] + (f" @{r['image_size']}"
                                                                    if len(sizes[r["model"]]) > 1 else "")
            for r in rows}


def value_text(row: dict | None) -> str:
    if row is None:
        return "–"
    return f"{row['value']:.2f} ± {row['std']:.2f}" if row.get("std") is not None else f"{row['value']:.2f}"


def leaderboard(rows: list[dict]) -> str:
    """bench.md: per protocol, the models best first by the headline metric, with their cost; then the failures."""
    lines = ["# Benchmark", "",
             "Made by `mimzoo bench` from `bench.json`: the same probes, preprocessing and seeds for every model. "
             "GFLOPs: one image through the feature's forward, counted by torch's flop counter; images/s: feature "
             "extraction on the device named, one device. Protocols that differ are in separate tables.", ""]
    for (data, probe, settings), members in groups(rows).items():
        settings = json.loads(settings)
        top = headline(probe, settings)
        models, names = by_model(members), labels(members)
        metrics = [top] + sorted({m for ms in models.values() for m in ms} - {top})
        order = sorted(models, key=lambda m: -(models[m][top]["value"] if top in models[m] else -math.inf))
        lines += [f"## {protocol_title(data, probe, members[0]['settings'])}", "",
                  "| rank | model | " + " | ".join(metrics) + " | feature | size | params (M) | GFLOPs | images/s |",
                  "|" + "---|" * (len(metrics) + 7)]
        for rank, model in enumerate(order, 1):
            first = next(iter(models[model].values()))
            cells = [value_text(models[model].get(m)) for m in metrics]
            cells[0] = f"**{cells[0]}**"
            lines.append(f"| {rank} | {names[model]} | " + " | ".join(cells) +
                         f" | {first['feature']} | {first['image_size']} | {first['params'] / 1e6:.2f} | "
                         f"{first['gflops']:.3g} | {first['images_per_s']} ({first['speed_device']}) |")
        lines.append("")
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed", "", "| model | probe | error |", "|---|---|---|"]
        lines += [f"| {short(r['model'])} | {r['probe']} | {r['error'].replace('|', '/')} |" for r in failed]
        lines.append("")
    return "\n".join(lines)


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi], about n of them."""
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (m * step) <= n:
            step *= m
            break
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def padded(lo: float, hi: float, fraction: float = 0.08) -> tuple[float, float]:
    if hi - lo < 1e-12:  # one value (e.g. models of one architecture): a range around it
        span = abs(lo) * 0.2 or 1.0
        return lo - span, hi + span
    pad = (hi - lo) * fraction
    return lo - pad, hi + pad


def panel(members: list[dict], title: str, metric: str, colours: dict[str, str]) -> Image.Image:
    """One panel: the headline metric (y) against GFLOPs per image (x, logarithmic over a wide range)."""
    img = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(img)
    small, normal = font(12), font(14)
    points = [r for r in members if r["metric"] == metric]
    xs, ys = [r["gflops"] for r in points], [r["value"] for r in points]
    log_x = min(xs) > 0 and max(xs) / min(xs) > 10
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    x0, x1 = padded(fx(min(xs)), fx(max(xs)))
    y0, y1 = padded(min(ys), max(ys))
    if y1 - y0 < MIN_SPAN:  # a few tenths apart are not drawn as if far apart
        mid = (y0 + y1) / 2
        y0, y1 = mid - MIN_SPAN / 2, mid + MIN_SPAN / 2
    y0, y1 = max(y0, 0.0), min(y1, 100.0) if max(ys) <= 100 else y1
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = PANEL[0] - MARGIN["right"], PANEL[1] - MARGIN["bottom"]
    px = lambda v: left + (fx(v) - x0) / (x1 - x0) * (right - left)  # noqa: E731
    py = lambda v: bottom - (v - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
    for t in nice_ticks(y0, y1):
        y = py(t)
        draw.line([(left, y), (right, y)], fill="#e6e6e6")
        draw.text((left - 6, y), f"{t:g}", fill="black", font=small, anchor="rm")
    xticks = [m * 10 ** e for e in range(math.floor(x0), math.ceil(x1) + 1) for m in (1, 2, 5)] if log_x \
        else nice_ticks(x0, x1)
    for t in xticks:
        if x0 - 1e-9 <= fx(t) <= x1 + 1e-9:
            x = px(t)
            draw.line([(x, top), (x, bottom)], fill="#e6e6e6")
            draw.text((x, bottom + 6), f"{t:g}", fill="black", font=small, anchor="ma")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((PANEL[0] / 2, 12), title, fill="black", font=normal, anchor="ma")
    draw.text(((left + right) / 2, PANEL[1] - 22), "GFLOPs per image" + (" (log scale)" if log_x else ""),
              fill="black", font=normal, anchor="ma")
    label = Image.new("RGB", (bottom - top, 20), "white")
    ImageDraw.Draw(label).text(((bottom - top) / 2, 10), f"{metric} (%)", fill="black", font=normal, anchor="mm")
    img.paste(label.rotate(90, expand=True), (8, top))
    names = labels(points)
    curves: dict[str, list[dict]] = {}
    for r in points:  # one model at several input sizes: a line through its points, cheapest first
        curves.setdefault(r["model"], []).append(r)
    for curve in curves.values():
        if len(curve) > 1:
            xy = [(px(r["gflops"]), py(r["value"])) for r in sorted(curve, key=lambda r: r["gflops"])]
            draw.line(xy, fill=colours.get(curve[0].get("method") or "", COLOURS[-1]), width=2)
    # one label per model: beside a lone point its name and value, at a line's costliest end its name (the values
    # are in bench.md); labels keep clear of every point and of each other
    boxes = [(px(r["gflops"]) - 6, py(r["value"]) - 6, px(r["gflops"]) + 6, py(r["value"]) + 6) for r in points]
    for r in points:
        colour = colours.get(r.get("method") or "", COLOURS[-1])
        x, y = px(r["gflops"]), py(r["value"])
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour, outline="black")
    ends = [max(curve, key=lambda r: r["gflops"]) for curve in curves.values()]
    for r in sorted(ends, key=lambda r: -r["value"]):
        x, y = px(r["gflops"]), py(r["value"])
        name = names[(r["model"], r.get("size_asked"))]
        text = name.rsplit(" @", 1)[0] if len(curves[r["model"]]) > 1 else f"{name} {r['value']:.1f}"
        box = label_box(x, y, draw.textlength(text, font=small), (left, top, right, bottom), boxes)
        boxes.append(box)
        draw.text((box[0], (box[1] + box[3]) / 2), text, fill="black", font=small, anchor="lm")
    return img


def label_box(x: float, y: float, width: float, axes: tuple, taken: list[tuple]) -> tuple[float, float, float, float]:
    """Where a point's label goes: the first of right of it, left of it, above it, under it that lies inside the
    axes and clear of `taken` (points and labels placed), else under it, moved down past what it covers."""
    left, top, right, bottom = axes
    overlaps = lambda b: any(b[0] < t[2] and t[0] < b[2] and b[1] < t[3] and t[1] < b[3] for t in taken)  # noqa: E731
    centred = min(max(left + 4, x - width / 2), right - 4 - width)
    candidates = [(x + 9, y - 7), (x - 9 - width, y - 7), (centred, y - 22), (centred, y + 8)]
    boxes = [(x0, y0, x0 + width, y0 + 14) for x0, y0 in candidates]
    inside = [b for b in boxes if b[0] >= left + 4 and b[2] <= right - 4 and b[1] >= top + 2 and b[3] <= bottom - 2]
    box = next((b for b in inside if not overlaps(b)), boxes[-1])
    while overlaps(box) and box[3] < bottom:
        box = (box[0], box[1] + 14, box[2], box[3] + 14)
    return box


def picture(rows: list[dict]) -> Image.Image | None:
    """bench.png: one panel per protocol (at most three per line), points coloured by method; None without rows."""
    found = groups(rows)
    if not found:
        return None
    methods = sorted({r.get("method") or "" for rs in found.values() for r in rs})
    colours = {m: COLOURS[i % (len(COLOURS) - 1)] for i, m in enumerate(m for m in methods if m)}
    panels = []
    for (data, probe, settings), members in found.items():
        metric = headline(probe, json.loads(settings))
        if any(r["metric"] == metric for r in members):
            where = Path(data).name if data != "digits" else data
            panels.append(panel(members, f"{where} · {probe} · {metric}", metric, colours))
    if not panels:
        return None
    per_line = min(3, len(panels))
    lines = math.ceil(len(panels) / per_line)
    legend = 28 if colours else 0
    sheet = Image.new("RGB", (PANEL[0] * per_line, PANEL[1] * lines + legend), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (PANEL[0] * (i % per_line), PANEL[1] * (i // per_line)))
    draw, x = ImageDraw.Draw(sheet), 20
    for method, colour in colours.items():
        y = PANEL[1] * lines + legend / 2
        draw.ellipse([x, y - 5, x + 10, y + 5], fill=colour, outline="black")
        draw.text((x + 16, y), method, fill="black", font=font(13), anchor="lm")
        x += 30 + int(draw.textlength(method, font=font(13)))
    return sheet


def write_report(rows: list[dict], out: str | Path) -> None:
    """bench.md and bench.png in `out` (each written atomically); without finished rows, no picture."""
    out = Path(out)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(leaderboard(rows))
    sheet = picture(rows)
    if sheet is not None:
        with atomic_path(out / "bench.png") as tmp:
            sheet.save(tmp, format="PNG")
