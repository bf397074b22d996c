"""Step-indexed schedules. Pure functions of the global step, so a resumed run continues them exactly."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, start: float = 0.99, end: float = 1.0) -> float:
    """EMA momentum m = end - (end - start)·(cos(π·k/K) + 1)/2, rising from `start` to `end`.

    The official MoBY code takes k from a counter that restarts at 0 on resume; here k is the trainer's
    global step, which is restored from the checkpoint.
    """
    if total_steps <= 0:
        return end
    progress = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    warmup_start_lr: float,
    min_lr: float,
) -> float:
    """Linear warmup from `warmup_start_lr` to `base_lr`, then cosine decay to `min_lr`, per iteration."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return min_lr + (base_lr - min_lr) * (math.cos(math.pi * progress) + 1) / 2


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """Linear scaling rule: `base_lr` is quoted per `reference_batch` images."""
    return base_lr * global_batch / reference_batch


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target ← m·target + (1 − m)·online over parameters only, as the official momentum update does."""
    # lerp: target + (1 - m)(online - target), one fused pass over the weights instead of a multiply and an add
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in online.parameters()], 1 - momentum)
