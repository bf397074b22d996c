"""Evaluation outputs across processes: every rank's rows, in sample order, each sample once."""

from __future__ import annotations

import pytorch_lightning as pl
import torch


def gather_unique(module: pl.LightningModule, index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tensors`` of every rank, sorted by dataset ``index``, each sample once.

    A distributed sampler pads the last batches with repeated samples so every rank gets as many; a metric over
    the split must count each sample once, or a padded split scores differently on 1 and on 8 GPUs.
    """
    if module.trainer.world_size > 1:
        index, *tensors = (module.all_gather(t).flatten(0, 1) for t in (index, *tensors))
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return tuple(t[order][keep] for t in tensors)
