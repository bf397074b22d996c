"""MoBY's momentum encoder: the EMA momentum schedule and the parameter update, pure functions of the step."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: float, start: float = 0.99, end: float = 1.0) -> float:
    """EMA momentum m = end - (end - start)·(cos(π·k/K) + 1)/2, rising from `start` to `end`.

    The official MoBY code takes k from a counter that restarts at 0 on resume; here k is the trainer's
    global step, which is restored from the checkpoint. K is ``inf`` while a time budget is still measuring its
    horizon: the momentum waits at `start`.
    """
    if total_steps <= 0:
        return end
    if not math.isfinite(total_steps):
        return start
    progress = min(max(step, 0), total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def update_momentum(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target ← m·target + (1 − m)·online over parameters only, as the official momentum update does."""
    # lerp: target + (1 - m)(online - target), one fused pass over the weights instead of a multiply and an add
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in online.parameters()], 1 - momentum)
