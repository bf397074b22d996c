"""MoBY's contrastive loss as pure functions, so the formula can be tested against an independent computation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_with_queue(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo InfoNCE: each query against its positive key and every negative in the queue.

    Args:
        query: (B, D) L2-normalised predictions of one view.
        key: (B, D) L2-normalised momentum keys of the other view (no gradient flows into them).
        queue: (D, K) L2-normalised negatives, one per column, as in the official MoBY buffers.
        temperature: softmax temperature (0.2 in MoBY).

    Returns:
        Mean cross-entropy with the positive at index 0.
    """
    positive = torch.einsum("bd,bd->b", query, key).unsqueeze(1)
    negative = query @ queue.to(query.dtype)
    logits = torch.cat([positive, negative], dim=1) / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


def moby_loss(
    pred_1: torch.Tensor,
    pred_2: torch.Tensor,
    key_1: torch.Tensor,
    key_2: torch.Tensor,
    queue_1: torch.Tensor,
    queue_2: torch.Tensor,
    temperature: float = 0.2,
) -> torch.Tensor:
    """The MoBY objective: the SUM of the two symmetric InfoNCE terms.

    View-1 predictions are scored against view-2 keys and queue 2 (which holds view-2 keys of earlier
    batches), and the reverse, exactly as in the official `models/moby.py`.
    """
    return infonce_with_queue(pred_1, key_2, queue_2, temperature) + infonce_with_queue(
        pred_2, key_1, queue_1, temperature
    )
