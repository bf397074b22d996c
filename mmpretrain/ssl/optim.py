"""AdamW for every method here: which weights get weight decay, which kernel, and the per-step lr schedule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mmpretrain.ssl.schedules import warmup_cosine_lr

NO_DECAY_KEYWORDS: tuple[str, ...] = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token")


def param_groups_weight_decay(
    modules: Iterable[nn.Module], weight_decay: float, extra_no_decay: Iterable[str] = ()
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    No decay on 1-D parameters (norm weights and biases), on names a timm model lists in `no_weight_decay()`,
    and on relative-position bias tables and position embeddings. The official MoBY code decays the Swin
    relative-position tables; Swin's supervised recipe does not, and neither do we.
    """
    keywords = NO_DECAY_KEYWORDS + tuple(extra_no_decay)
    decay, no_decay = [], []
    for module in modules:
        skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            exempt = param.ndim <= 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords)
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw_kernel(precision: str | int) -> dict[str, bool]:
    """``fused=True`` (the fastest AdamW) unless Lightning's mixed precision (AMP) plugin runs the step.

    The AMP plugin (``16-mixed`` and ``bf16-mixed``) refuses to clip gradients of an optimizer that unscales them
    internally, which a fused one does; ``foreach`` is the fastest kernel it accepts.
    """
    return {"foreach": True} if "mixed" in str(precision) else {"fused": True}


def warmup_cosine_schedule(
    module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    lr: float,
    min_lr: float,
    warmup_epochs: float,
    warmup_start_lr: float | None = None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` return value: per-step linear warmup over ``warmup_epochs``, then cosine.

    ``lr`` / ``min_lr`` / ``warmup_start_lr`` are already scaled (see :func:`global_batch`); the warmup starts at
    ``warmup_start_lr`` (default ``lr / 100``). Every parameter group keeps its own ratio to ``lr``.
    """
    trainer = module.trainer
    total_steps = int(trainer.estimated_stepping_batches)
    accumulate = trainer.accumulate_grad_batches
    warmup_steps = int(warmup_epochs * max(trainer.num_training_batches // accumulate, 1))
    start = lr / 100 if warmup_start_lr is None else warmup_start_lr

    def factor(step: int) -> float:
        return warmup_cosine_lr(step, total_steps, warmup_steps, lr, start, min_lr) / lr

    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}}


def global_batch(module: pl.LightningModule) -> int:
    """Samples per optimizer step over all processes, for the linear lr scaling rule.

    With ``max_steps`` Lightning has not loaded the training data when ``configure_optimizers`` runs; it is loaded
    here, as Lightning itself would a moment later.
    """
    trainer = module.trainer
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    return trainer.train_dataloader.batch_size * trainer.world_size * trainer.accumulate_grad_batches
