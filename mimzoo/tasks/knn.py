"""Weighted k-NN classification of frozen features (the protocol of DINO/iBOT/MIM-Refiner k-NN evaluations)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Cosine similarity of L2-normalised features; the k most similar training samples each vote
    exp(similarity / temperature) for their class; argmax. Test features go in chunks, so 1.28M x 1024 training
    features need only one chunk's (chunk_size x N) similarity matrix at a time; runs on the features' device."""
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test_feats.shape[0], chunk_size):
        query = F.normalize(test_feats[start:start + chunk_size].to(train.device).float(), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        out.append(votes.argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
