"""`mimzoo probe knn|linear|fewshot`: accuracy of a backbone's frozen features on a labelled dataset (scikit-learn's
digits or an ImageNet-style folder); the features are extracted once and can be cached."""
from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import loading
from ..errors import ConfigError
from .features import check_labels, extract, model_digest
from .fewshot import LAMBDA, check_shots, fewshot_on_features
from .knn import check_knn, knn_predict
from .linear import check_linear, linear_grid_on_features, linear_probe_on_features
from .pooling import check_pooling

DIGITS_SPLIT = 1200  # the first 1200 digits train, the other 597 test


class DigitsDataset(torch.utils.data.Dataset):
    """Items {"image": uint8 (3, size, size), "label", "index"} of scikit-learn's digits [lo, hi)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, lo: int, hi: int):
        self.images, self.labels, self.lo, self.hi = images, labels, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[self.lo + i], "label": self.labels[self.lo + i], "index": self.lo + i}


def digits_loaders(size: int, batch_size: int = 128) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's handwritten digits (1797 real 8 x 8 scans), upsampled to the model's input size; the first
    1200 train, the rest test. A probe example that needs no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = torch.nn.functional.interpolate(x, size=size, mode="nearest").repeat(1, 3, 1, 1)
    images, labels = (x * 255).to(torch.uint8), torch.tensor(digits.target)
    loader = lambda lo, hi: DataLoader(DigitsDataset(images, labels, lo, hi), batch_size=batch_size)  # noqa: E731
    return loader(0, DIGITS_SPLIT), loader(DIGITS_SPLIT, len(images))


def folder_splits(root: str) -> tuple[tuple[list, list, list], tuple[list, list, list]]:
    """(files, labels, class names) of root/train and root/val; val's labels index train's classes."""
    from ..data import class_folder

    train = class_folder(Path(root) / "train")
    return train, class_folder(Path(root) / "val", train[2])


def folder_loaders(root: str, size: int, batch_size: int, workers: int,
                   splits: tuple | None = None) -> tuple[DataLoader, DataLoader]:
    """ImageNet-style root/train/<class>/* and root/val/<class>/*, each image resized and centre-cropped."""
    from ..data import ImageFolderDataset, collate_images

    train, val = splits or folder_splits(root)
    plain = lambda files, labels: DataLoader(ImageFolderDataset(files, size, labels), batch_size=batch_size,  # noqa: E731
                                             num_workers=workers, collate_fn=collate_images)
    return plain(*train[:2]), plain(*val[:2])


def files_fingerprint(root: Path, files: list[Path], labels: list[int], classes: list[str]) -> str:
    """sha256 of the class names and of each file's path under `root`, size, modification time and label: a file
    added, removed, replaced or relabelled changes it."""
    h = hashlib.sha256("\n".join(classes).encode())
    for f, label in zip(files, labels):
        st = os.stat(f)
        h.update(f"\n{Path(f).relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}\t{label}".encode())
    return h.hexdigest()


def load_probed(model) -> torch.nn.Module:
    """A backbone as given, or the backbone of a zoo name / checkpoint, without its classifier (features, not the
    logits of a fine-tuned classifier)."""
    if isinstance(model, torch.nn.Module):
        return model
    return loading.backbone(loading.read(model), num_classes=0)


def check_data(data: str) -> tuple | None:
    """The layout and classes of "digits" or a folder, checked before a model is loaded or an image decoded: None
    for digits, else `folder_splits(data)`."""
    if data == "digits":
        return None
    splits = folder_splits(data)
    (_, ytr, classes), (_, yte, _) = splits
    check_labels(torch.tensor(ytr), torch.tensor(yte), what=str(data), names=classes)
    return splits


def describe(data: str, size: int, splits: tuple | None = None, fingerprint: bool = False) -> dict[str, dict]:
    """{"train": ..., "test": ...}: which images each split holds and how they are made, at input size `size` (what
    a features cache is keyed by). fingerprint: a folder's files by a stat of each (`files_fingerprint`), so that
    a changed file changes the description."""
    if data == "digits":
        return {split: {"dataset": "digits", "split": split, "samples": bounds, "size": size,
                        "transform": "nearest upsampling"}
                for split, bounds in (("train", [0, DIGITS_SPLIT]), ("test", [DIGITS_SPLIT, None]))}
    splits = splits or check_data(data)
    described = {}
    for split, folder, (files, labels, _) in (("train", "train", splits[0]), ("test", "val", splits[1])):
        described[split] = {"dataset": str(Path(data).resolve()), "split": folder, "samples": len(files),
                            "size": size, "transform": "decode_image (resize + centre crop)"}
        if fingerprint:
            described[split]["files"] = files_fingerprint(Path(data), files, labels, splits[0][2])
    return described


def data_loaders(data: str, size: int, batch_size: int, workers: int, splits: tuple | None = None,
                 fingerprint: bool = False) -> tuple[DataLoader, DataLoader, dict, list[str] | None]:
    """(train loader, test loader, `describe(...)`, class names) at input size `size`."""
    if data == "digits":
        return *digits_loaders(size, batch_size), describe(data, size), None
    splits = splits or check_data(data)
    train, test = folder_loaders(data, size, batch_size, workers, splits)
    return train, test, describe(data, size, splits, fingerprint), splits[0][2]


def check_loading(batch_size, workers) -> None:
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}")
    if not isinstance(workers, numbers.Integral) or workers < 0:
        raise ConfigError(f"workers must be 0 (load in this process) or more; got {workers!r}")


def feature_sets(model, data: str, poolings: Sequence[str], batch_size: int = 128, workers: int = 4,
                 cache_dir: str | None = None, progress: bool = True, device: str | torch.device | None = None,
                 devices: int | None = None, digest: str | None = None) -> dict[str, tuple[torch.Tensor, ...]]:
    """For each pooling: (train features, train labels, test features, test labels) of a backbone (or zoo name /
    checkpoint) on "digits" or an ImageNet-style folder; with `cache_dir`, read from / written to
    <split>_<pooling>.safetensors there, keyed by the model's weights, the data's files, the input size, the
    pooling and the precision (see `features.extract`: features of another model or data are never reused).
    devices: extract on this many devices through Lightning (`lightning_features`); digest: a precomputed
    `model_digest` of the backbone."""
    for pooling in poolings:
        check_pooling(pooling)
    check_loading(batch_size, workers)
    splits = check_data(data)
    vit = load_probed(model)
    size = vit.data_config["input_size"][-1]
    train, test, described, names = data_loaders(data, size, batch_size, workers, splits, fingerprint=bool(cache_dir))
    digest = digest or (model_digest(vit) if cache_dir else None)
    out = {}
    for pooling in poolings:
        tag = lambda split, pooling=pooling: f"{cache_dir}/{split}_{pooling}.safetensors" if cache_dir else None
        common = {"progress": progress, "digest": digest, "device": str(device) if device is not None else None,
                  "devices": devices}
        out[pooling] = (*extract(vit, train, pooling, cache=tag("train"), data=described["train"], **common),
                        *extract(vit, test, pooling, cache=tag("test"), data=described["test"], **common))
    first = next(iter(out.values()), None)
    if first is not None:  # unreadable images may have emptied a class
        check_labels(first[1], first[3], what=str(data), names=names, warn=data == "digits")
    return out


def frozen_features(model: str, data: str, pooling: str = "default", batch_size: int = 128, workers: int = 4,
                    cache_dir: str | None = None, progress: bool = True) -> tuple[torch.Tensor, ...]:
    return feature_sets(model, data, [pooling], batch_size, workers, cache_dir, progress)[pooling]


def knn_scores(features: tuple[torch.Tensor, ...], ks=(20, 200), temperature: float = 0.07,
               standardize: bool = False) -> dict:
    """{"knn<k>_top1": %} of weighted k-NN on (train features, train labels, test features, test labels)."""
    check_knn(ks, temperature)
    xtr, ytr, xte, yte = features
    result = {}
    for k in ks:
        pred = knn_predict(xtr, ytr, xte, k=k, temperature=temperature, standardize=standardize)
        result[f"knn{k}_top1"] = round((pred == yte).float().mean().item() * 100, 2)
    return result


def linear_scores(features: tuple[torch.Tensor, ...], epochs: int = 90, lr: float = 6.4, probe_batch_size: int = 256,
                  warmup_epochs: float = 10, seed: int = 0) -> dict:
    check_linear(epochs, probe_batch_size)
    out = linear_probe_on_features(*features, epochs=epochs, lr=lr, batch_size=probe_batch_size,
                                   warmup_epochs=warmup_epochs, seed=seed)
    return {"linear_top1": out["top1"], "linear_top5": out["top5"], "lr": out["lr"], "epochs": out["epochs"],
            "probe_batch_size": out["batch_size"]}


def fewshot_scores(features: tuple[torch.Tensor, ...], shots=(1, 2, 5), seeds=(0, 1, 2), lambd: float = LAMBDA,
                   preprocess_test: bool = False) -> dict:
    check_shots(shots, seeds)
    per_shot = fewshot_on_features(*features, shots=shots, seeds=seeds, lambd=lambd, preprocess_test=preprocess_test)
    result = {"seeds": list(seeds)}
    for k, r in per_shot.items():
        result[f"{k}shot_top1_mean"] = r["mean"]
        result[f"{k}shot_top1_std"] = r["std"]
        result[f"{k}shot_top1_runs"] = r["runs"]
    return result


def knn_probe(model: str, data: str, ks=(20, 200), temperature: float = 0.07, pooling: str = "default",
              batch_size: int = 128, workers: int = 4, cache_dir: str | None = None, progress: bool = True,
              standardize: bool = False) -> dict:
    """Top-1 accuracy (%) of weighted k-NN for each k. data: "digits" or an ImageNet-style folder (train/, val/).
    standardize: features standardised with the training set's statistics first (MIM-Refiner's protocol)."""
    check_knn(ks, temperature)
    features = frozen_features(model, data, pooling, batch_size, workers, cache_dir, progress)
    return knn_scores(features, ks, temperature, standardize)


def linear_probe(model: str, data: str, *, epochs: int = 90, lr: float = 6.4, probe_batch_size: int = 256,
                 warmup_epochs: float = 10, seed: int = 0, pooling: str = "default", batch_size: int = 128,
                 workers: int = 4, cache_dir: str | None = None, progress: bool = True) -> dict:
    """Top-1/top-5 (%) of MAE's BN + linear head trained with LARS on the cached features (no augmentation: a
    fast estimate; `mimzoo fit` with recipes/downstream/linear_probe_vit_base.yaml runs the full protocol)."""
    check_linear(epochs, probe_batch_size)
    features = frozen_features(model, data, pooling, batch_size, workers, cache_dir, progress)
    return linear_scores(features, epochs, lr, probe_batch_size, warmup_epochs, seed)


def linear_grid_probe(model: str, data: str, *, epochs: int = 50, probe_batch_size: int = 1024, seed: int = 0,
                      batch_size: int = 128, workers: int = 4, cache_dir: str | None = None,
                      progress: bool = True) -> dict:
    """MIM-Refiner's grid (SGD, 13 lrs x {cls, [cls, avg]} x {last block after the final norm, last 4 raw blocks};
    avg alone for backbones without a cls token): the best top-1 (%) and the whole grid."""
    check_linear(epochs, probe_batch_size)
    vit = load_probed(model)
    features = ["cls", "cls_avg", "cls_last4", "cls_avg_last4"] if vit.num_prefix_tokens else ["avg"]
    sets = feature_sets(vit, data, features, batch_size, workers, cache_dir, progress)
    labels = next(iter(sets.values()))
    out = linear_grid_on_features({k: (v[0], v[2]) for k, v in sets.items()}, labels[1], labels[3], epochs=epochs,
                            batch_size=probe_batch_size, seed=seed)
    return {"linear_top1": out["best"]["top1"], "linear_top5": out["best"]["top5"], "best_lr": out["best"]["lr"],
            "best_feature": out["best"]["feature"], "grid": out["grid"]}


def fewshot_probe(model: str, data: str, *, shots=(1, 2, 5), seeds=(0, 1, 2), lambd: float = LAMBDA,
                  preprocess_test: bool = False, pooling: str = "default", batch_size: int = 128, workers: int = 4,
                  cache_dir: str | None = None, progress: bool = True) -> dict:
    """Mean and standard deviation over seeds of the extreme low-shot logistic-regression top-1 (%) for each
    number of shots (MSN / MIM-Refiner protocol, see `fewshot.py`)."""
    check_shots(shots, seeds)
    features = frozen_features(model, data, pooling, batch_size, workers, cache_dir, progress)
    return fewshot_scores(features, shots, seeds, lambd, preprocess_test)
