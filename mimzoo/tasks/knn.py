"""Weighted k-NN classification of frozen features (the protocol of DINO/iBOT/MIM-Refiner k-NN evaluations)."""
from __future__ import annotations

import logging
import numbers

import torch
import torch.nn.functional as F

from ..errors import ConfigError

log = logging.getLogger("mimzoo")


def check_knn(ks, temperature: float = 0.07) -> None:
    """Refuse what gives a meaningless k-NN accuracy: no k, k < 1 (no neighbour votes: every prediction is
    class 0), temperature <= 0 (the votes overflow)."""
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks:
        raise ConfigError("k-NN needs at least one k")
    bad = [k for k in ks if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1]
    if bad:
        raise ConfigError(f"k-NN k must be a positive integer (the number of neighbours that vote); got {bad}")
    if not temperature > 0:
        raise ConfigError(f"k-NN temperature must be positive (votes are exp(similarity / T)); got {temperature}")


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk_size: int = 1024,
                standardize: bool = False) -> torch.Tensor:
    """Cosine similarity of L2-normalised features; the k most similar training samples each vote
    exp(similarity / temperature) for their class; argmax. Test features go in chunks, so 1.28M x 1024 training
    features need only one chunk's (chunk_size x N) similarity matrix at a time; runs on the features' device.
    A k above the number of training samples is clamped to it, with one log line. With `standardize`, every
    feature is first standardised with the training set's mean and std (+ 1e-6), MIM-Refiner's protocol."""
    check_knn([k], temperature)
    if len(train_feats) == 0:
        raise ConfigError("k-NN needs at least one training sample")
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    train_feats, test_feats = train_feats.float(), test_feats.float()
    if standardize:
        mean, std = train_feats.mean(0, keepdim=True), train_feats.std(0, keepdim=True) + 1e-6
        train_feats, test_feats = (train_feats - mean) / std, (test_feats.to(mean.device) - mean) / std
    train = F.normalize(train_feats, dim=1)
    labels = train_labels.to(train.device).long()
    if k > train.shape[0]:
        log.warning(f"k-NN: k={k} is more than the {train.shape[0]} training samples; using k={train.shape[0]} "
                    f"(every training sample votes)")
        k = train.shape[0]
    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start:start + chunk_size].to(train.device).float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
