"""The `mimzoo` command.

fit / validate / test / predict go to LightningCLI (any mimzoo method by class path, configs from recipes/);
the zoo commands (models, download, convert, export) are plain argparse sub-commands.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import UNWRITABLE, ConfigError, Error

LIGHTNING = ("fit", "validate", "test", "predict")


def _metric_summary(entry: dict) -> str:
    parts = []
    for m in entry.get("metrics") or []:
        if m.get("value") is not None:
            parts.append(f"{m.get('task', '?')} {m.get('metric', '')} {m['value']}".strip())
    return "; ".join(parts[:2])


def zoo_markdown(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def cmd_models(args) -> int:
    from . import zoo

    if args.results_doc:
        print(results_markdown())
        return 0
    names = zoo.list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; `mimzoo models` lists all", file=sys.stderr)
        return 1
    rows = [("name", "method", "arch", "pretrain data", "licence", "reported")]
    for n in names:
        e = zoo.registry()[n]
        if "alias_of" in e:
            rows.append((n, f"= {e['alias_of']}", "", "", "", ""))
            continue
        rows.append((n, str(e.get("method", "")), str(e.get("arch", "")), str(e.get("pretrain_data", "")),
                     str(e.get("license", "")), _metric_summary(e)))
    if args.results:
        rows = results_rows(args.results, names)
        if len(rows) == 1:
            tasks = ", ".join(results_tasks())
            print(f"no checkpoint reports {args.results!r}; reported tasks: {tasks}", file=sys.stderr)
            return 1
        print(zoo_markdown(rows) if args.markdown else text_table(rows))
        return 0
    if args.taxonomy:
        rows = taxonomy_rows()
        print(zoo_markdown(rows) if args.markdown else text_table(rows))
        return 0
    if args.by:
        return print_grouped(rows, args.by, args.markdown)
    print(zoo_markdown(rows) if args.markdown else text_table(rows))
    return 0


def text_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_tasks() -> list[str]:
    from . import zoo

    return sorted({m["task"] for e in zoo.registry().values() if "alias_of" not in e for m in e.get("metrics") or []})


def results_rows(task: str, names: list[str] | None = None) -> list[tuple[str, ...]]:
    """Every reported number for `task` across the zoo, one row each with its protocol, best first within a
    protocol: numbers under different protocols are listed apart, never side by side as if comparable."""
    from . import zoo

    found = []
    for name in names or zoo.list_models():
        e = zoo.registry()[name]
        if "alias_of" in e:
            continue
        for m in e.get("metrics") or []:
            if m["task"] == task:
                found.append((str(m.get("protocol", "")), str(m.get("metric", "")), m.get("value"), name,
                              str(m.get("source", ""))))
    # lower is better only for errors and distances; everything else reported here is higher-is-better
    lower = lambda metric: metric in ("l1", "abs_rel", "rmse", "mce_error")  # noqa: E731
    found.sort(key=lambda r: (r[0], r[1], (1 if lower(r[1]) else -1) * float(r[2] or 0)))
    return [("protocol", "metric", "value", "checkpoint", "source"),
            *[(p, m, str(v), n, src) for p, m, v, n, src in found]]


def results_markdown() -> str:
    """docs/results.md: one table per reported task (dataset and split), generated from checkpoints.yaml."""
    parts = ["# Reported results across the zoo", "",
             "Generated from `checkpoints.yaml` by `mimzoo models --results-doc` (a test keeps it in sync): every",
             "number a checkpoint's authors reported, with the protocol it was measured under and where it was read.",
             "None is measured by mimzoo. Rows are grouped by protocol: numbers under different protocols (another",
             "head, schedule, resolution or feature) are not comparable, however close the protocol names look.",
             "`mimzoo models --results TASK` prints one table in the terminal.", ""]
    for task in results_tasks():
        parts += [f"## {task}", "", zoo_markdown(results_rows(task)), ""]
    return "\n".join(parts)


def taxonomy_rows() -> list[tuple[str, ...]]:
    """One row per method mimzoo trains: the survey's axes and how many zoo checkpoints it has."""
    from collections import Counter

    from . import zoo

    counts = Counter(e.get("method") for e in zoo.registry().values() if "alias_of" not in e)
    rows = [("method", *zoo.AXES, "downstream", "checkpoints", "survey class")]
    for method, t in zoo.taxonomy().items():
        rows.append((f"{t.get('title', method)} (`{method}`)", *(str(t.get(a, "")) for a in zoo.AXES),
                     ", ".join(t.get("downstream") or []), str(counts.get(method, 0)),
                     t.get("survey_class") or "not listed"))
    return rows


def print_grouped(rows: list[tuple[str, ...]], axis: str, markdown: bool) -> int:
    """The models table in groups by one taxonomy axis of each checkpoint's method."""
    from . import zoo

    if axis not in zoo.AXES:
        print(f"--by must be one of {', '.join(zoo.AXES)}, got {axis!r}", file=sys.stderr)
        return 2
    methods = zoo.taxonomy()
    groups: dict[str, list] = {}
    for r in rows[1:]:
        method = zoo.entry(r[0]).get("method")
        groups.setdefault(str((methods.get(method) or {}).get(axis, "not classified")), []).append(r)
    for value in sorted(groups):
        print(f"\n## {axis}: {value}\n" if markdown else f"\n[{axis}: {value}]")
        print(zoo_markdown([rows[0], *groups[value]]) if markdown else text_table([rows[0], *groups[value]]))
    return 0


def cmd_download(args) -> int:
    from . import zoo
    from .loading import hub_folder

    for name in args.names:
        if name.startswith("hf-hub:"):
            path = hub_folder(name[len("hf-hub:"):], args.cache_dir, force=args.force, verify=args.verify)
        else:
            path, _ = zoo.fetch(name, cache_dir=args.cache_dir, progress=not args.quiet, force=args.force,
                                verify=args.verify)
        print(f"{name}: {path}")
    return 0


def cmd_export(args) -> int:
    from .export import export

    dst = export(args.src, args.to, args.dst, cache_dir=args.cache_dir)
    how = ({"timm": f"timm.create_model('local-dir:{dst}', pretrained=True)",
            "transformers": f"transformers' from_pretrained({str(dst)!r})"})[args.to]
    print(f"wrote {dst} ({', '.join(sorted(p.name for p in dst.iterdir()))}); load it with {how}")
    return 0


def cmd_convert(args) -> int:
    from . import cards, checkpoint, loading

    converted = loading.read(args.src, format=args.format, cache_dir=args.cache_dir, num_heads=args.num_heads,
                             decoder_num_heads=args.decoder_num_heads)
    loading.backbone(converted)  # proves the weights build a backbone before anything is written
    config = {**converted.config, "source_format": converted.config.get("format")}
    config["provenance"] = cards.provenance(converted.config, converted.source)
    dst = checkpoint.write_folder(args.dst, config, converted.state_dict)
    cards.write_folder_card(dst, config, what=f"{args.src} converted from its {config['source_format']} format to a "
                            f"mimzoo folder (`mimzoo convert`).")
    print(f"wrote {dst}/config.json and {dst}/model.safetensors ({len(converted.state_dict)} tensors, "
          f"{config['source_format']} -> mimzoo); load it with mimzoo.load({str(dst)!r})")
    return 0


def cmd_curate(args) -> int:
    from .curate import Options, curate, preset_options

    if args.inputs[0] == "show":  # mimzoo curate show OUT [INDEX] --png FILE
        from .curate.show import show

        index = int(args.inputs[2]) if len(args.inputs) > 2 else 0
        path = show(args.inputs[1] if len(args.inputs) > 1 else args.out, index, args.png or "pair.png")
        print(f"wrote {path}")
        return 0

    if not args.out:
        raise ConfigError("--out is required: the folder that receives shards/, pairs.jsonl and summary.json")
    fields = {f: getattr(args, f) for f in ("low", "high", "gap", "folder_step", "folder_offset", "min_sharpness",
                                             "folder_mode", "window", "pick", "min_duration", "crop_bottom",
                                             "rotations")}
    fields = {k: v for k, v in fields.items() if v is not None}  # given flags override the preset
    fields["multiview"] = args.multiview
    if args.retry:
        fields["retry"] = True
    options = preset_options(args.preset, **fields) if args.preset else Options(**fields)
    summary = curate(args.inputs, args.out, workers=args.workers, progress=not args.quiet, engine=args.engine,
                     ray_address=args.ray_address, options=options)
    print(f"{summary['pairs']} pairs from {summary['sources']} sources ({summary['candidates']} candidates) -> "
          f"{args.out}/shards, index {args.out}/pairs.jsonl; rejected: {summary['rejected']}")
    return 0


def cmd_probe(args) -> int:
    from .tasks import probe

    pooling = args.pooling or ("cls_prenorm" if args.kind == "fewshot" else "default")
    common = {"pooling": pooling, "batch_size": args.batch_size, "workers": args.workers,
              "cache_dir": args.cache, "progress": not args.quiet}
    if args.kind == "knn":
        result = probe.knn_probe(args.model, args.data, ks=args.k, temperature=args.temperature,
                                 standardize=args.standardize, **common)
    elif args.kind == "linear" and args.grid:
        result = probe.linear_grid_probe(args.model, args.data, epochs=args.epochs or 50, seed=args.seed,
                                         probe_batch_size=args.probe_batch_size or 1024,
                                         **{k: v for k, v in common.items() if k != "pooling"})  # the grid's own
    elif args.kind == "linear":
        batch = args.probe_batch_size or 256
        lr = args.blr * batch / 256 if args.blr is not None else args.lr
        result = probe.linear_probe(args.model, args.data, epochs=args.epochs or 90, lr=lr, probe_batch_size=batch,
                                    warmup_epochs=args.warmup_epochs,
                                    seed=args.seed, **common)
    else:
        result = probe.fewshot_probe(args.model, args.data, shots=args.shots, seeds=args.seeds, lambd=args.lambd,
                                     preprocess_test=args.preprocess_test, **common)
        if not args.quiet:  # the human summary on stderr keeps stdout one JSON document
            for k in args.shots:
                print(f"{k}-shot top-1: {result[f'{k}shot_top1_mean']:.2f} ± {result[f'{k}shot_top1_std']:.2f} "
                      f"({len(args.seeds)} seeds)", file=sys.stderr)
    print(json.dumps({"model": args.model, "data": args.data, "probe": args.kind, **result}))
    return 0


def cmd_bench(args) -> int:
    from .tasks.bench import bench

    settings = {k: getattr(args, k) for k in ("ks", "temperature", "standardize", "epochs", "lr", "probe_batch_size",
                                              "warmup_epochs", "seed", "shots", "seeds", "lambd", "preprocess_test",
                                              "pooling", "fewshot_pooling")}
    done = bench(args.models, args.data, args.probes, args.out, size=args.size, batch_size=args.batch_size,
                 workers=args.workers, device=args.device, devices=args.devices, progress=not args.quiet, **settings)
    print(f"{len(done['computed'])} (model, probe) pairs computed, {len(done['reused'])} kept from an earlier run, "
          f"{len(done['failed'])} failed -> {args.out}/bench.json, bench.md, bench.png", file=sys.stderr)
    failed = {}
    for model, probe_name in done["failed"]:
        failed.setdefault(model, []).append(probe_name)
    for model, probes in failed.items():  # one line per model (a load failure fails all its probes)
        error = next(r["error"] for r in done["rows"] if r["model"] == model and r["probe"] == probes[0])
        print(f"failed: {model} ({', '.join(probes)}): {error}", file=sys.stderr)
    return 1 if done["failed"] else 0


def zoo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimzoo", description="masked image modeling model zoo")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list the zoo (checkpoints.yaml) as a table")
    m.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'mae_*'")
    m.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/zoo.md is made so)")
    m.add_argument("--by", default=None, metavar="AXIS",
                   help="group by one of the MIM survey's axes: paradigm, masking, target, objective, architecture")
    m.add_argument("--taxonomy", action="store_true", help="the survey's axes of every method mimzoo trains")
    m.add_argument("--results", default=None, metavar="TASK",
                   help="every reported number for a task (e.g. imagenet-1k), with its protocol and source")
    m.add_argument("--results-doc", action="store_true", help="print docs/results.md (all tasks, Markdown)")
    m.set_defaults(func=cmd_models)
    d = sub.add_parser("download", help="download and verify zoo checkpoints into the cache")
    d.add_argument("names", nargs="+", help="zoo names or hf-hub:org/repo[@revision]")
    d.add_argument("--cache-dir", default=None)
    d.add_argument("--quiet", action="store_true")
    d.add_argument("--force", action="store_true",
                   help="drop the cached copy (and any partial download) and download again")
    d.add_argument("--verify", action="store_true",
                   help="hash cached copies now (a load trusts a digest while the file's size and mtime are "
                        "those recorded with it)")
    d.set_defaults(func=cmd_download)
    c = sub.add_parser("convert", help="upstream checkpoint -> mimzoo folder (config.json + model.safetensors)")
    c.add_argument("src", help="a local upstream checkpoint or a zoo name")
    c.add_argument("dst", help="output folder")
    c.add_argument("--format", default=None, help="force a converter (default: detected from the keys)")
    c.add_argument("--num-heads", type=int, default=None)
    c.add_argument("--decoder-num-heads", type=int, default=None)
    c.add_argument("--cache-dir", default=None)
    c.set_defaults(func=cmd_convert)
    x = sub.add_parser("export", help="mimzoo weights -> a timm or transformers folder that library loads")
    x.add_argument("src", help="a zoo name, a file or folder in any format mimzoo reads, or hf-hub:org/repo")
    x.add_argument("--to", required=True, choices=("timm", "transformers"),
                   help="timm: timm.create_model('local-dir:DIR', pretrained=True); transformers: "
                        "ViTMAEForPreTraining / ViTMAEModel.from_pretrained(DIR)")
    x.add_argument("dst", help="output folder")
    x.add_argument("--cache-dir", default=None)
    x.set_defaults(func=cmd_export)
    k = sub.add_parser("curate", help="MIMIC pair curation: videos / frame folders -> pair shards; "
                                      "`mimzoo curate show OUT [INDEX] --png pair.png` draws a pair")
    k.add_argument("inputs", nargs="+", help="videos, folders of frames or of videos, list files (.txt)")
    k.add_argument("--out", default=None, help="output folder (required unless `show`)")
    k.add_argument("--png", default=None, help="with `mimzoo curate show OUT [INDEX]`: the picture to write")
    k.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    k.add_argument("--preset", choices=("arkitscenes", "co3d", "demon", "mannequin", "scannet"), default=None,
                   help="the options of MIMIC's script for that source (flags given here override them)")
    k.add_argument("--gap", type=float, default=None, help="seconds between the frames of a video pair (1)")
    k.add_argument("--low", type=float, default=None, help="accept overlap above this, exclusive (0.5)")
    k.add_argument("--high", type=float, default=None, help="accept overlap below this, exclusive (0.75)")
    k.add_argument("--folder-mode", choices=("offset", "windows", "all"), default=None,
                   help="frame folders: (i, i + offset) every step frames (CO3D, default), 60-frame windows "
                        "(ScanNet) or every pair (DeMoN)")
    k.add_argument("--folder-step", type=int, default=None, help="offset mode (10)")
    k.add_argument("--folder-offset", type=int, default=None, help="offset mode (5)")
    k.add_argument("--window", type=int, default=None, help="windows mode: frames per window (60)")
    k.add_argument("--pick", choices=("all", "lowest"), default=None,
                   help="keep every accepted pair, or the lowest-overlap one of each window / sequence")
    k.add_argument("--min-duration", type=float, default=None, help="skip shorter videos (seconds)")
    k.add_argument("--crop-bottom", type=float, default=None,
                   help="cut this fraction off the bottom of each frame (Mannequin: 0.2)")
    k.add_argument("--retry", action="store_true",
                   help="videos: when (t, t + 1) overlaps too much, try (t, t + 2) (MIMIC's ArkitScenes loop)")
    k.add_argument("--rotations", default=None,
                   help="JSON {video stem: w|a|z|s}: rotate each video's frames; videos not listed are skipped")
    k.add_argument("--multiview", action="store_true",
                   help="inputs are multi-view sets (a sub-folder of views per sample; optional depth + cameras)")
    k.add_argument("--min-sharpness", type=float, default=None, help="multi-view: Laplacian variance filter (1000)")
    k.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local process pool, or Ray tasks (pip install 'mimzoo[ray]')")
    k.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    k.add_argument("--quiet", action="store_true")
    k.set_defaults(func=cmd_curate)
    pr = sub.add_parser("probe", help="frozen-feature probes: mimzoo probe knn|linear|fewshot --model NAME "
                                       "--data DIR|digits; prints one JSON line")
    pr.add_argument("kind", choices=("knn", "linear", "fewshot"),
                    help="knn: weighted k-NN (DINO); linear: MAE's BN + linear head with LARS on cached features "
                         "(no augmentation; `mimzoo fit -c recipes/downstream/linear_probe_vit_base.yaml` runs the "
                         "full protocol); fewshot: MSN / MIM-Refiner extreme low-shot logistic regression")
    pr.add_argument("--model", required=True, help="zoo name, checkpoint file or folder")
    pr.add_argument("--data", required=True, help="'digits' (built in) or an ImageNet-style folder (train/, val/)")
    pr.add_argument("--pooling", choices=("default", "cls", "cls_prenorm", "cls_avg", "cls_last4", "cls_avg_last4",
                                          "avg", "proxies"), default=None,
                    help="feature: default = the checkpoint's own (knn, linear); fewshot uses cls_prenorm (the last "
                         "block's cls token before the final norm, as MSN / SiameseIM / MIM-Refiner)")
    pr.add_argument("--batch-size", type=int, default=128, help="feature extraction batch size")
    pr.add_argument("--workers", type=int, default=4)
    pr.add_argument("--cache", default=None, help="folder to cache the features (safetensors)")
    pr.add_argument("--quiet", action="store_true")
    knn = pr.add_argument_group("knn")
    knn.add_argument("--k", type=int, nargs="+", default=[20, 200])
    knn.add_argument("--temperature", type=float, default=0.07)
    knn.add_argument("--standardize", action="store_true",
                     help="standardise each feature with the training split's mean and std before the cosine "
                          "(MIM-Refiner's protocol: --k 10 --pooling cls_prenorm --standardize)")
    lin = pr.add_argument_group("linear")
    lin.add_argument("--grid", action="store_true",
                     help="MIM-Refiner's grid instead: SGD, 13 lrs x {cls, [cls, avg]} x {last, last 4 blocks}, "
                          "50 epochs, batch 1024; reports the best")
    lin.add_argument("--epochs", type=int, default=None, help="default 90 (LARS), 50 (--grid)")
    lin.add_argument("--lr", type=float, default=6.4, help="LARS lr (MAE: 0.1 x 16384 / 256)")
    lin.add_argument("--blr", type=float, default=None, help="instead of --lr: lr = blr x probe batch / 256")
    lin.add_argument("--probe-batch-size", type=int, default=None,
                     help="batch of cached features per step (default 256; 1024 with --grid)")
    lin.add_argument("--warmup-epochs", type=float, default=10)
    lin.add_argument("--seed", type=int, default=0)
    few = pr.add_argument_group("fewshot")
    few.add_argument("--shots", type=int, nargs="+", default=[1, 2, 5], help="training images per class")
    few.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one split per seed")
    few.add_argument("--lambd", type=float, default=0.00025, help="L2 strength before division by n_train")
    few.add_argument("--preprocess-test", action="store_true",
                     help="centre + L2-normalise the test features too (MSN's script; MIM-Refiner does not)")
    pr.set_defaults(func=cmd_probe)
    b = sub.add_parser("bench", help="the same probes, preprocessing and seeds over many checkpoints: "
                                     "OUT/bench.json (one row per model x probe x metric), bench.md, bench.png")
    b.add_argument("--models", nargs="+", required=True,
                   help="zoo names, patterns ('mae_*'), checkpoint files or folders, hf-hub:org/repo")
    b.add_argument("--data", required=True, help="'digits' (built in) or an ImageNet-style folder (train/, val/)")
    b.add_argument("--probes", default="knn,linear,fewshot", help="comma-separated: knn, linear, fewshot")
    b.add_argument("--out", required=True, help="folder of bench.json / .md / .png; a rerun keeps finished rows")
    b.add_argument("--size", type=int, default=None, help="input size of every model (default: each model's own)")
    b.add_argument("--batch-size", type=int, default=128, help="feature extraction batch size")
    b.add_argument("--workers", type=int, default=4)
    b.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    b.add_argument("--devices", type=int, default=None,
                   help="extract features on this many devices through Lightning (one process each)")
    b.add_argument("--quiet", action="store_true")
    bs = b.add_argument_group("probe settings (default: those of `mimzoo probe`)")
    bs.add_argument("--pooling", default=None, help="knn and linear feature (default: the checkpoint's own)")
    bs.add_argument("--fewshot-pooling", default=None, help="few-shot feature (default cls_prenorm; avg without cls)")
    bs.add_argument("--k", dest="ks", type=int, nargs="+", default=None, help="knn (20 200)")
    bs.add_argument("--temperature", type=float, default=None, help="knn (0.07)")
    bs.add_argument("--standardize", action="store_true", default=None, help="knn: MIM-Refiner's standardisation")
    bs.add_argument("--epochs", type=int, default=None, help="linear (90)")
    bs.add_argument("--lr", type=float, default=None, help="linear LARS lr (6.4)")
    bs.add_argument("--probe-batch-size", type=int, default=None, help="linear (256)")
    bs.add_argument("--warmup-epochs", type=float, default=None, help="linear (10)")
    bs.add_argument("--seed", type=int, default=None, help="linear (0)")
    bs.add_argument("--shots", type=int, nargs="+", default=None, help="fewshot (1 2 5)")
    bs.add_argument("--seeds", type=int, nargs="+", default=None, help="fewshot (0 1 2)")
    bs.add_argument("--lambd", type=float, default=None, help="fewshot (0.00025)")
    bs.add_argument("--preprocess-test", action="store_true", default=None, help="fewshot: MSN's test preprocessing")
    b.set_defaults(func=cmd_bench)
    from .reconstruct import cmd_reconstruct  # torch-free import: the parser stays quick

    r = sub.add_parser("reconstruct", help="what a pretrainer (MAE, CroCo, MIMIC) fills in on your images: one row "
                                           "per image, original | masked | reconstruction | pasted")
    r.add_argument("images", nargs="+", help="image files (any format PIL reads)")
    r.add_argument("--model", required=True, help="zoo name, checkpoint file or folder of a pretrainer")
    r.add_argument("--out", default="reconstruction.png", help="the picture to write (.png, .jpg)")
    r.add_argument("--reference", action="append", default=None, metavar="IMAGE",
                   help="CroCo / MIMIC: the second view (once for all images, or repeated: one per image)")
    r.add_argument("--mask-ratio", type=float, default=None, help="fraction of patches removed (the model's own)")
    r.add_argument("--seed", type=int, default=0, help="the masks' seed")
    r.add_argument("--size", type=int, default=None, help="input size (default the model's; resamples positions)")
    r.set_defaults(func=cmd_reconstruct)
    for name in LIGHTNING:
        sub.add_parser(name, help=f"LightningCLI {name}: mimzoo {name} -c recipes/...yaml", add_help=False)
    return p


def lightning_cli(argv: list[str]):
    import warnings

    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    check_config_files(argv)
    # checkpoints are written beside their target and renamed (mimzoo.training.AtomicCheckpointIO)
    defaults = {"plugins": [{"class_path": "mimzoo.training.AtomicCheckpointIO"}]}
    with warnings.catch_warnings():  # argv is sys.argv here, passed on, not a second set of arguments
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                            args=argv, save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                            trainer_defaults=defaults, parser_kwargs={"exit_on_error": False})


def check_config_files(argv: list[str]) -> None:
    """Each `-c/--config FILE` exists and is YAML, else a ConfigError naming the file, line and column (the
    parser's own message names neither the file nor, for a missing one, the fix)."""
    import yaml

    files = [argv[k + 1] for k, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for f in files:
        try:
            with open(f) as stream:
                yaml.safe_load(stream)
        except FileNotFoundError:
            raise ConfigError(f"config file {f} does not exist (the recipes are in recipes/, e.g. "
                              f"recipes/quickstart/mae_tiny.yaml)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"{f} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def parser_error_line(message: str) -> str:
    """jsonargparse's multi-line message as one line: the key, the class and what is wrong, with the closest
    accepted option for a misspelt one."""
    import difflib
    import importlib
    import inspect
    import re

    lines = [ln.strip(" -") for ln in message.splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("Subtypes:", "Errors:", "Given value", "Expected a <class "
                                                            "'NoneType'>", "Does not validate against any"))]
    text = " ".join(keep)
    option, cls = re.search(r"Option '([^']+)' is not accepted", text), re.search(r"class_path '([\w.]+)'", text)
    if option and cls:
        try:
            module, _, name = cls.group(1).rpartition(".")
            params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
            close = difflib.get_close_matches(option.group(1), params, n=1)
            text += f" (did you mean {close[0]!r}?)" if close else f" (it takes: {', '.join(params)})"
        except (ImportError, AttributeError, ValueError, TypeError):
            pass
    return text


def environment_error_line(e: OSError) -> str | None:
    """A folder that cannot be written (read-only, full, no permission) as one line naming the file and the fix;
    None for any other OSError (a bug shows its traceback)."""
    if e.errno not in UNWRITABLE or not e.filename:
        return None
    return (f"cannot write {e.filename}: {e.strerror}; point the run at a writable folder "
            f"(--trainer.default_root_dir, MIMZOO_CACHE for downloads and sample data, --out / --cache)")


# optional packages with a mimzoo extra, and import names whose pip name differs
EXTRAS = {"ray": "ray", "tensorboard": "tensorboard", "tensorboardX": "tensorboard"}
PIP_NAMES = {"sklearn": "scikit-learn", "cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml",
             "skimage": "scikit-image"}


def missing_dependency_line(e: ModuleNotFoundError) -> str | None:
    """A package a recipe or an option needs but that is not installed (a logger's backend, Ray, ...) as one line
    with the install command; None for a module of mimzoo itself (a bug shows its traceback)."""
    import re

    name = (e.name or "").split(".")[0]
    if not name:  # Lightning's own checks: "Requirement 'wandb>=0.12.10' not met", "Neither `tensorboard` nor ..."
        found = re.search(r"Requirement '([A-Za-z0-9_.-]+)|`(\w+)`", str(e))
        name = next((g for g in found.groups() if g), "") if found else ""
    if not name or name == __package__:
        return None
    install = f"pip install 'mimzoo[{EXTRAS[name]}]'" if name in EXTRAS else f"pip install {PIP_NAMES.get(name, name)}"
    return f"this needs the package {name!r}, which is not installed: {install}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in LIGHTNING else None
    try:
        if command:
            lightning_cli(argv)
            return 0
        args = zoo_parser().parse_args(argv)
        command = args.command
        return args.func(args)
    except Error as e:  # a missing or empty data folder, a bad weights file, a failed download: one line
        message = str(e)
    except argparse.ArgumentError as e:  # a misspelt option or a wrong value in a config
        message = f"{parser_error_line(str(e))} (mimzoo {command} --help lists the options)"
    except (ModuleNotFoundError, ValueError) as e:  # jsonargparse wraps a logger's missing package in ValueErrors
        cause = e
        while cause is not None and not isinstance(cause, ModuleNotFoundError):
            cause = cause.__cause__ or cause.__context__
        message = missing_dependency_line(cause) if cause is not None else None
        if message is None:
            raise
    except OSError as e:
        message = environment_error_line(e)
        if message is None:
            raise
    print(f"mimzoo {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
