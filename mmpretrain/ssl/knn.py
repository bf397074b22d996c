"""Weighted k-nearest-neighbour classification of features, the online monitor of SSL training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores from the k most cosine-similar training features, each weighted by exp(sim / T).

    This is the InstDisc/DINO weighted kNN used by solo-learn's monitor. Returns (N_test, num_classes) scores.
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        one_hot = F.one_hot(train_labels[top_idx], num_classes).float()
        scores.append((one_hot * weights.unsqueeze(-1)).sum(1))
    return torch.cat(scores)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of the weighted kNN classifier."""
    num_classes = int(max(train_labels.max(), test_labels.max()).item()) + 1
    scores = weighted_knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    ranked = scores.argsort(dim=1, descending=True)
    hit = ranked == test_labels.unsqueeze(1)
    top5 = hit[:, : min(5, num_classes)].any(1).float().mean().item()
    return {"top1": 100.0 * hit[:, 0].float().mean().item(), "top5": 100.0 * top5}
