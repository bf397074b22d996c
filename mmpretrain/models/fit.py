"""Whether a state dict loads strict into a model: the one fit check of the hub and of continued pretraining."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def _few(items: list[str]) -> str:
    return f"{items[:5]}{' ...' if len(items) > 5 else ''}"


def state_fits(model: nn.Module | Mapping[str, torch.Tensor], state: Mapping[str, Any],
               ignore: Callable[[str], bool] | None = None) -> str:
    """What keeps ``state`` from loading strict into ``model``; ``""`` when it fits.

    ``model`` may be a module (on the ``meta`` device too: only shapes are compared, so a model's size can be
    confirmed before a byte of it is allocated) or its state dict. Keys of ``state`` the model lacks but ``ignore``
    accepts (a classifier head of a headless model) are not counted as unexpected.

    Example:
        >>> state_fits(nn.Linear(2, 3), {"weight": torch.zeros(3, 2)})
        "missing keys ['bias']"
    """
    expected = model.state_dict() if isinstance(model, nn.Module) else model
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if ignore is None or not ignore(k))
    common = [k for k in expected if k in state]
    untyped = [f"{k} ({type(state[k]).__name__})" for k in common if not isinstance(state[k], torch.Tensor)]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in common
              if isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape]
    problems = [f"{what} {_few(names)}" for what, names in
                (("missing keys", missing), ("unexpected keys", unexpected), ("not tensors", untyped),
                 ("shapes (checkpoint vs model)", shapes)) if names]
    return "; ".join(problems)
