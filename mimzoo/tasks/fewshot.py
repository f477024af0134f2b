"""Extreme low-shot classification of frozen features: MSN's protocol, as MIM-Refiner runs it (1, 2 and 5 images
per class, several splits; multinomial logistic regression fitted by cyanure upstream).

Upstream (MIM-Refiner `OfflineLogregCallback`, after MSN `logistic_eval.py`): the n training features are
preprocessed in place by `cyanure.preprocess(centering=True, normalize=True, columns=False)`: each row minus its own
mean, then divided by its L2 norm. Then `MultiClassifier(loss="multiclass-logistic", penalty="l2",
fit_intercept=False).fit(lambd=0.00025 / n, ...)` minimises, over W in R^(d x K),

    F(W) = (1/n) sum_i [ log sum_k exp(x_i . w_k) - x_i . w_(y_i) ]  +  (lambda / 2) ||W||_F^2,
    lambda = 0.00025 / n

(cyanure's ERM: mean loss plus psi(W); penalty "l2" is psi(w) = lambda/2 ||w||^2 for each class predictor;
lambd2, also passed upstream, only enters elastic-net penalties). Predictions are argmax_k x . w_k.

scikit-learn's `LogisticRegression(C, fit_intercept=False)` (multinomial, L2) minimises
C sum_i loss_i + 1/2 ||W||_F^2 = C n F(W) when 1/(2 C n) = lambda / 2, i.e. C = 1 / (n lambda) (cyanure's own
docs state the same mapping) = 1 / 0.00025 = 4000 for every n. Same objective, same (unique, strictly convex)
minimiser.

Here the objective is minimised exactly (L-BFGS, float64, full batch) instead of by cyanure's solver stopped at a
relative duality gap of 1e-3 (max 300 epochs, float32), so numbers can differ from upstream in the last digits.
Test features: MIM-Refiner passes them to `score` without preprocessing (preprocess_test=False, the default, for
parity). Row L2 normalisation does not change an argmax without intercept, but row centring does; MSN's own script
preprocesses the test features the same way (preprocess_test=True, the consistent choice).
The splits: MSN ships fixed ImageNet subset files (3 per shot count); `fewshot_splits` draws seeded ones instead,
for any labelled set.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .features import check_labels

LAMBDA = 0.00025  # upstream's lambd before the division by the number of training samples


def cyanure_preprocess(x: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean, then scaled to unit L2 norm (a copy, in float64)."""
    x = x.double()
    return F.normalize(x - x.mean(dim=1, keepdim=True), dim=1)


def check_shots(shots, seeds) -> None:
    """At least one shot count and one seed; every shot count a positive integer (0 shots trains on nothing)."""
    shots, seeds = list(shots), list(seeds)
    if not shots or not seeds:
        raise ConfigError(f"few-shot needs at least one shot count and one seed; got shots={shots}, seeds={seeds}")
    bad = [k for k in shots if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1]
    if bad:
        raise ConfigError(f"few-shot shots must be positive integers (training samples per class); got {bad}")


def fewshot_splits(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Sorted indices of `shots` samples of each class, drawn without replacement by a generator seeded with
    `seed`. One permutation per class (classes in sorted order), so for one seed the 1-shot split is inside the
    2-shot split, which is inside the 5-shot split: results across shot counts compare like for like."""
    check_shots([shots], [seed])
    labels = labels.cpu()
    classes, counts = labels.unique(sorted=True, return_counts=True)
    if len(classes) and int(counts.min()) < shots:  # clamping would report fewer shots under this one's name
        small = int(counts.argmin())
        raise ConfigError(f"{shots}-shot needs {shots} training samples per class, but class {int(classes[small])} "
                          f"has {int(counts[small])}: use shots <= {int(counts.min())}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=g)[:shots]])
    return torch.cat(chosen).sort().values


def fit_logistic(x: torch.Tensor, y: torch.Tensor, lambd: float, num_classes: int | None = None,
                 max_iter: int = 2000, tolerance: float = 1e-10) -> torch.Tensor:
    """W (d, K) minimising (1/n) sum_i softmax cross-entropy(x_i W, y_i) + lambd/2 ||W||_F^2, no intercept,
    by L-BFGS with strong-Wolfe line search in float64 from W = 0. `x` is used as given (preprocess first)."""
    x = x.double()
    y = y.long().to(x.device)
    num_classes = int(num_classes or int(y.max()) + 1)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    # n * F: the same minimiser, with gradients of the order of one sample's, so one tolerance fits every n
    scale = len(x)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w, y, reduction="sum") + scale * lambd / 2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, history_size=50,
                                  tolerance_grad=tolerance, tolerance_change=0.0, line_search_fn="strong_wolfe")
    optimizer.step(objective)
    return w.detach()


def fewshot_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                     test_labels: torch.Tensor, *, lambd: float = LAMBDA, preprocess_test: bool = False) -> float:
    """Top-1 (%) of the upstream logistic regression trained on these features (lambda = lambd / n_train)."""
    x = cyanure_preprocess(train_feats)
    w = fit_logistic(x, train_labels, lambd / len(x), num_classes=int(train_labels.max()) + 1)
    test = cyanure_preprocess(test_feats) if preprocess_test else test_feats.double()
    pred = (test.to(w.device) @ w).argmax(dim=1).cpu()
    return (pred == test_labels.cpu()).double().mean().item() * 100


def fewshot_on_features(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                  test_labels: torch.Tensor, *, shots=(1, 2, 5), seeds=(0, 1, 2), lambd: float = LAMBDA,
                  preprocess_test: bool = False) -> dict[int, dict]:
    """{shots: {"mean", "std", "runs"}}: top-1 (%) on the whole test set for each seed's split of the training
    set; std is the sample standard deviation over seeds (0 for a single seed)."""
    check_shots(shots, seeds)
    check_labels(train_labels, test_labels, warn=False)
    out = {}
    for k in shots:
        runs = []
        for seed in seeds:
            idx = fewshot_splits(train_labels, k, seed)
            runs.append(fewshot_accuracy(train_feats[idx], train_labels[idx], test_feats, test_labels,
                                         lambd=lambd, preprocess_test=preprocess_test))
        mean = sum(runs) / len(runs)
        std = math.sqrt(sum((r - mean) ** 2 for r in runs) / (len(runs) - 1)) if len(runs) > 1 else 0.0
        out[int(k)] = {"mean": round(mean, 2), "std": round(std, 2), "runs": [round(r, 2) for r in runs]}
    return out
