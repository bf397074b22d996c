"""MoBY's training state beyond the online backbone, for continued pretraining (``model.init=...``).

An official MoBY release file and this project's MoBY training checkpoints hold the momentum (target) encoder, the
projector, the predictor, the momentum projector and both key queues besides the online encoder. This module
reads them in the naming of :class:`mmpretrain.ssl.MoBY`, so a run can continue from all of it; other sources
(published encoders, timm files) hold only a backbone and yield nothing here. What it returns is checked: finite
tensors only, and each queue pointer a single integer inside its queue, or a `CheckpointReadError` naming the file
and the key (a broken file never starts a training from NaN).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmpretrain.hub.errors import CheckpointReadError
from mmpretrain.hub.formats import LoadedCheckpoint, convert_moby_official, weight_tensors
from mmpretrain.hub.safe_load import safe_torch_load

# official MoBYMLP (Identity, Linear, BatchNorm1d, ReLU) + linear_out  ->  MLPHead (Linear, BatchNorm1d, ReLU, Linear)
_OFFICIAL_MLP = {"linear_hidden.1.": "0.", "linear_hidden.2.": "1.", "linear_out.": "3."}
_OFFICIAL_HEADS = {"projector": "projector", "projector_k": "target_projector", "predictor": "predictor"}
TRAINING_PREFIXES: tuple[str, ...] = (
    "target_backbone.", "projector.", "target_projector.", "predictor.", "queue1.", "queue2.",
)


def moby_training_state(loaded: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """Target backbone, heads and queues of ``loaded`` in :class:`~mmpretrain.ssl.MoBY`'s naming; ``{}`` if none.

    Official files: ``encoder_k.*`` is converted to timm layout like the online encoder, the MLP keys are
    renumbered, ``queue1``/``queue2`` become ``queueN.keys`` and the shared ``queue_ptr`` both pointers. Training
    checkpoints of this project: their ``state_dict`` entries under those names, as saved.
    """
    if loaded.path is None or loaded.format not in ("moby-official", "lightning") or loaded.config.get("kind"):
        return {}
    obj = safe_torch_load(loaded.path)
    source = str(loaded.path)
    if loaded.format == "lightning":
        state = {k: v for k, v in obj["state_dict"].items() if k.startswith(TRAINING_PREFIXES)}
        return _checked(weight_tensors(state, source, "state_dict."), source, "state_dict.")
    model = obj["model"]
    used = (*_OFFICIAL_HEADS, "encoder_k", "queue1", "queue2")
    weight_tensors({k: v for k, v in model.items() if k.split(".")[0] in used}, source, "model.")
    out: dict[str, torch.Tensor] = {}
    target = {f"encoder.{k[len('encoder_k.'):]}": v for k, v in model.items() if k.startswith("encoder_k.")}
    if target:
        out.update({f"target_backbone.{k}": v for k, v in convert_moby_official(target, source).items()})
    for key, value in model.items():
        head, _, rest = key.partition(".")
        for old, new in _OFFICIAL_MLP.items():
            if head in _OFFICIAL_HEADS and rest.startswith(old):
                out[f"{_OFFICIAL_HEADS[head]}.{new}{rest[len(old):]}"] = value
    for i in (1, 2):
        if f"queue{i}" in model:
            out[f"queue{i}.keys"] = model[f"queue{i}"]
            out[f"queue{i}.ptr"] = _pointer(model.get("queue_ptr", torch.zeros(1, dtype=torch.long)),
                                            model[f"queue{i}"], source, "model.queue_ptr")
    return out


def _pointer(value: Any, keys: torch.Tensor, source: str, key: str) -> torch.Tensor:
    """A queue pointer as MoBY keeps it (shape (1,), int64), if it is one integer inside a queue of ``keys``."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_floating_point() or value.is_complex():
        shown = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointReadError(f"{source}: {key!r} must be one integer (a queue position), got {shown}")
    length = keys.shape[-1] if keys.ndim == 2 else 0
    if not 0 <= int(value.reshape(-1)[0]) < max(length, 1):
        raise CheckpointReadError(f"{source}: {key!r} = {int(value.reshape(-1)[0])} lies outside its queue of "
                                  f"{length} keys")
    return value.reshape(1).long()


def _checked(state: Mapping[str, torch.Tensor], source: str, where: str) -> dict[str, torch.Tensor]:
    """The queue pointers of a training checkpoint's state, checked like an official file's."""
    out = dict(state)
    for i in (1, 2):
        if f"queue{i}.ptr" in out and f"queue{i}.keys" in out:
            out[f"queue{i}.ptr"] = _pointer(out[f"queue{i}.ptr"], out[f"queue{i}.keys"], source, f"{where}queue{i}.ptr")
    return out
