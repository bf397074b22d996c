"""``method=finetune`` for a kept classifier: a cosine head trained on augmented views of the support pictures.

The recipe of :func:`~mmpretrain.fewshot.finetune.finetune_head` (P>M>F) with the backbone frozen, so the views are
embedded once and the head alone is trained (and saved): ``scale · cos(embedding, class weight)``, the weights
starting from the class prototypes, Adam on the cross-entropy of every view. Leave-one-out retrains the head
without each picture's views, which makes its calibration as honest as the other methods'.

Usage::

    from mmpretrain.fewshot.head import embed_views, train_head
    views = embed_views(encoder, support_paths, views=8)           # (1 + 8, S, D), view 0 un-augmented
    weight = train_head(torch.from_numpy(views), codes, n_classes)  # (C, D)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.fewshot.finetune import random_resized_crop_flip

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder

__all__ = ["embed_views", "head_scores", "held_out_head_scores", "train_head"]


def embed_views(encoder: ImageEncoder, images: Sequence[Any], views: int = 8, seed: int = 0,
                batch_size: int = 64) -> np.ndarray:
    """(1 + views, S, D) raw embeddings: each picture as it is, then ``views`` random crops and flips of it.

    The crops are made on the preprocessed uint8 pictures, so every view passes through the encoder's own
    normalisation; the global RNG is left untouched.
    """
    pixels = torch.cat([encoder.preprocess(images[i:i + batch_size], i) for i in range(0, len(images), batch_size)])
    out = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for v in range(views + 1):
            batches = []
            for start in range(0, len(pixels), batch_size):
                batch = pixels[start:start + batch_size]
                if v:
                    batch = (random_resized_crop_flip(batch.float() / 255) * 255).round().clamp(0, 255).byte()
                batches.append(encoder.embed(batch.to(encoder.device), normalize=False).cpu())
            out.append(torch.cat(batches))
    return torch.stack(out).numpy()


def head_scores(weight: torch.Tensor, scale: float, features: torch.Tensor) -> torch.Tensor:
    """(N, C) logits ``scale · cos(feature, class weight)``."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


def train_head(views: torch.Tensor, codes: torch.Tensor, n_classes: int, steps: int = 100, lr: float = 1e-2,
               scale: float = 10.0, seed: int = 0) -> torch.Tensor:
    """(C, D) class weights trained on (V, S, D) view embeddings of the support rows with class ``codes`` (S,).

    Starts from the normalised class means of view 0; ``steps`` full-batch Adam steps on the cross-entropy of
    every view. A class without rows keeps a zero weight (cosine 0 to everything).
    """
    codes = torch.as_tensor(codes, dtype=torch.long)
    one_hot = F.one_hot(codes, n_classes).float()
    prototypes = one_hot.T @ views[0] / one_hot.sum(dim=0).clamp_min(1).unsqueeze(-1)
    weight = F.normalize(prototypes, dim=-1).clone().requires_grad_(True)
    features = views.reshape(-1, views.shape[-1])
    targets = codes.repeat(views.shape[0])
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam([weight], lr=lr)
        for _ in range(steps):
            loss = F.cross_entropy(head_scores(weight, scale, features), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return weight.detach()


def held_out_head_scores(views: torch.Tensor, codes: torch.Tensor, n_classes: int, loo_limit: int = 100,
                         folds: int = 10, **options: Any) -> np.ndarray:
    """(S, C) logits of each support row from a head trained without its views: leave-one-out up to
    ``loo_limit`` rows, ``folds`` interleaved folds past it (the head is retrained once per fold)."""
    rows = views.shape[1]
    fold = np.arange(rows) if rows <= loo_limit else np.arange(rows) % folds
    scores = torch.zeros(rows, n_classes)
    for k in np.unique(fold):
        keep = torch.from_numpy(fold != k)
        weight = train_head(views[:, keep], codes[keep], n_classes, **options)
        held = torch.from_numpy(fold == k)
        scores[held] = head_scores(weight, options.get("scale", 10.0), views[0, held])
    return scores.numpy()
