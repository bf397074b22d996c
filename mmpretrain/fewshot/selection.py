"""Which pictures to label next: the uncertain ones, spread over the embedding space.

Uncertainty is the margin between the two most probable classes (small: the classifier hesitates). Diversity is
k-center greedy (Sener & Savarese 2018): each pick is far from the support set and from the picks before it, so
fifty suggestions are not fifty near-copies of one confusing picture. Each step picks the pool picture with the
largest ``(1 - weight) · (1 - margin) + weight · distance / initial largest distance``.

Usage::

    from mmpretrain.fewshot.selection import select
    rows = select(pool_embeddings, margins, support_embeddings, n=50)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.errors import ConfigError

__all__ = ["margins", "select"]


def margins(probabilities: np.ndarray) -> np.ndarray:
    """(N,) difference between the two largest probabilities of each row (1 for a single class)."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities), dtype=np.float32)
    top = np.sort(probabilities, axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]).astype(np.float32)


def _unit(x: np.ndarray, center: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)) - torch.as_tensor(center), dim=-1)


def select(pool: np.ndarray, margin: np.ndarray, support: np.ndarray, n: int = 50, weight: float = 0.5,
           center: np.ndarray | None = None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``pool`` to label next, in the order picked, and each pick's distance to what was already covered.

    Args:
        pool: (N, D) embeddings of the unlabelled pictures. margin: (N,) their margins (see :func:`margins`).
        support: (S, D) embeddings already labelled (the first centers).
        n: pictures to pick (at most N).
        weight: share of diversity against uncertainty, in [0, 1] (0: smallest margins first; 1: pure k-center).
        center: CL2N center of the distances (default the support mean), as the classifier uses.
        exclude: (N,) rows never to pick (pictures already labelled).
    """
    if not 0 <= weight <= 1:
        raise ConfigError(f"weight={weight} must lie in [0, 1]")
    if n < 1:
        raise ConfigError(f"n={n} must be at least 1")
    center = np.asarray(support, dtype=np.float32).mean(axis=0) if center is None else np.asarray(center, np.float32)
    points, anchors = _unit(pool, center), _unit(support, center)
    nearest = torch.cdist(points, anchors).min(dim=1).values if len(anchors) else torch.full((len(points),), 2.0)
    scale = float(nearest.max().clamp_min(1e-12))
    uncertainty = torch.as_tensor(1 - np.asarray(margin, dtype=np.float32))
    picked, distances = [], []
    taken = torch.zeros(len(points), dtype=torch.bool) if exclude is None else torch.as_tensor(exclude).bool().clone()
    for _ in range(min(n, int((~taken).sum()))):
        score = (1 - weight) * uncertainty + weight * nearest / scale
        row = int(score.masked_fill(taken, float("-inf")).argmax())
        picked.append(row)
        distances.append(float(nearest[row]))
        taken[row] = True
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(points - points[row], dim=1))
    return np.asarray(picked, dtype=np.int64), np.asarray(distances, dtype=np.float32)
