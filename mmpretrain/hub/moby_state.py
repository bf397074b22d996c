"""MoBY's training state beyond the online backbone, for continued pretraining (``model.init=...``).

An official MoBY release file and this project's MoBY training checkpoints hold the momentum (target) encoder, the
projector, the predictor, the momentum projector and both key queues besides the online encoder. This module
reads them in the naming of :class:`mmpretrain.ssl.MoBY`, so a run can continue from all of it; other sources
(published encoders, timm files) hold only a backbone and yield nothing here.
"""

from __future__ import annotations

import torch

from mmpretrain.hub.formats import LoadedCheckpoint, convert_moby_official
from mmpretrain.hub.safe_load import safe_torch_load

# official MoBYMLP (Identity, Linear, BatchNorm1d, ReLU) + linear_out  ->  MLPHead (Linear, BatchNorm1d, ReLU, Linear)
_OFFICIAL_MLP = {"linear_hidden.1.": "0.", "linear_hidden.2.": "1.", "linear_out.": "3."}
_OFFICIAL_HEADS = {"projector": "projector", "projector_k": "target_projector", "predictor": "predictor"}
TRAINING_PREFIXES: tuple[str, ...] = (
    "target_backbone.", "projector.", "target_projector.", "predictor.", "queue1.", "queue2.",
)  # fmt: skip


def moby_training_state(loaded: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """Target backbone, heads and queues of ``loaded`` in :class:`~mmpretrain.ssl.MoBY`'s naming; ``{}`` if none.

    Official files: ``encoder_k.*`` is converted to timm layout like the online encoder, the MLP keys are
    renumbered, ``queue1``/``queue2`` become ``queueN.keys`` and the shared ``queue_ptr`` both pointers. Training
    checkpoints of this project: their ``state_dict`` entries under those names, as saved.
    """
    if loaded.path is None or loaded.format not in ("moby-official", "lightning") or loaded.config.get("kind"):
        return {}
    obj = safe_torch_load(loaded.path)
    if loaded.format == "lightning":
        return {k: v for k, v in obj["state_dict"].items() if k.startswith(TRAINING_PREFIXES)}
    model = obj["model"]
    out: dict[str, torch.Tensor] = {}
    target = {f"encoder.{k[len('encoder_k.'):]}": v for k, v in model.items() if k.startswith("encoder_k.")}
    if target:
        out.update({f"target_backbone.{k}": v for k, v in convert_moby_official(target).items()})
    for key, value in model.items():
        head, _, rest = key.partition(".")
        for old, new in _OFFICIAL_MLP.items():
            if head in _OFFICIAL_HEADS and rest.startswith(old):
                out[f"{_OFFICIAL_HEADS[head]}.{new}{rest[len(old):]}"] = value
    for i in (1, 2):
        if f"queue{i}" in model:
            out[f"queue{i}.keys"] = model[f"queue{i}"]
            out[f"queue{i}.ptr"] = model.get("queue_ptr", torch.zeros(1, dtype=torch.long)).reshape(1).long()
    return out
