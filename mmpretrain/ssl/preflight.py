"""Checks of a MoBY setting against the data, made once the data is read and before the first step.

MoBY's queue takes one global batch of keys per step, so its length must be a multiple of the global batch (the
official code asserts it at the first step, after the whole start-up). A queue at least as long as the data set
holds every image's own older keys as negatives, which hurts what the queue is for; that gets a warning.

Usage: ``QueueCheck()`` among the trainer's callbacks (``mmpretrain-train`` adds it to every training).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from mmpretrain.errors import ConfigError

__all__ = ["QueueCheck", "queue_fits"]

log = logging.getLogger(__name__)


def queue_fits(queue_len: int, batch_size: int, world_size: int, dataset_size: int | None = None) -> str | None:
    """None when ``queue_len`` suits the global batch and the data; a warning text when the queue is at least as long
    as the data set.

    Raises:
        ConfigError: ``queue_len`` is not a multiple of ``batch_size x world_size``, naming values that fit.
    """
    global_batch = batch_size * world_size
    if queue_len % global_batch:
        lower = max(global_batch, queue_len // global_batch * global_batch)
        batches = [b for b in range(1, queue_len + 1) if queue_len % (b * world_size) == 0]
        nearest = min(batches, key=lambda b: (abs(b - batch_size), -b))
        raise ConfigError(f"model.queue_len={queue_len} must be divisible by the global batch size {global_batch} "
                          f"(data.batch_size={batch_size} x {world_size} processes): set model.queue_len={lower} "
                          f"or data.batch_size={nearest}")
    if dataset_size is not None and queue_len >= dataset_size:
        example = max(global_batch, dataset_size // 4 // global_batch * global_batch)
        return (f"model.queue_len={queue_len} is at least the data set's {dataset_size} images: the queue holds older "
                "keys of the very images in the batch as negatives; choose model.queue_len well below the data set "
                f"size (a multiple of {global_batch}, e.g. {example})")
    return None


class QueueCheck(pl.Callback):
    """Run :func:`queue_fits` when fit sets up (after the data module read its inputs, before the first step) on a
    module with a ``queue1`` key queue; others pass."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        queue = getattr(pl_module, "queue1", None)
        data = trainer.datamodule
        batch_size = getattr(data, "batch_size", None)
        if stage != "fit" or queue is None or not batch_size:
            return
        source = getattr(data, "source", None)
        size = len(source.paths) if source is not None and hasattr(source, "paths") else None
        warning = queue_fits(int(queue.keys.shape[1]), int(batch_size), trainer.world_size, size)
        if warning and trainer.is_global_zero:
            log.warning(warning)
