"""Continued pretraining (``model.init=<checkpoint>``): a MoBY model starts from a checkpoint's weights.

The checkpoint is read by the caller (the entry point asks the hub), which hands over the backbone weights in timm
layout and whatever target backbone, heads and queues the file holds; this module decides what applies and logs
what was restored and what starts fresh.

Usage::

    from mmpretrain.ssl.warm_start import warm_start
    report = warm_start(model, "moby_swin_t_300ep.pth", load_weights)  # {"backbone": "restored", ...}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch

from mmpretrain.errors import ConfigError

__all__ = ["WeightsLoader", "init_architecture", "warm_start"]

log = logging.getLogger(__name__)

#: ``(source, architecture) -> (backbone state in timm layout, training state in MoBY's names, format name)``
WeightsLoader = Callable[[str, Mapping[str, Any]], tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], str]]


def init_architecture(model: pl.LightningModule) -> dict[str, Any]:
    """The backbone architecture a checkpoint without its own config is read with: the model's own."""
    hp = model.hparams
    return {"name": hp.backbone, "kwargs": dict(hp.get("backbone_kwargs") or {})}


def warm_start(
    model: pl.LightningModule, source: str, load_weights: WeightsLoader, resuming: bool = False
) -> dict[str, str]:
    """Start ``model`` from the checkpoint ``source`` (any file ``load_encoder`` reads); returns ``part -> what``.

    An official MoBY file or a MoBY training checkpoint also gives the target backbone, the heads and the queues;
    other files give the backbone only. A resumed run (``resuming``) takes everything from its own checkpoint, so
    ``source`` is ignored then.

    Raises:
        ConfigError: the model cannot start from a checkpoint, or the backbone does not fit it.
    """
    if resuming:
        log.info("model.init=%s is ignored: resuming from ckpt_path restores every weight", source)
        return {}
    if not hasattr(model, "initialize_from"):
        raise ConfigError(f"model.init={source}: {type(model).__name__} cannot start from a checkpoint")
    backbone, training_state, fmt = load_weights(source, init_architecture(model))
    report = model.initialize_from(backbone, training_state, source)
    lines = "\n".join(f"  {part}: {what}" for part, what in report.items())
    log.info("model.init=%s (%s format):\n%s", source, fmt, lines)
    return report
