"""Pieces every method here trains with: lr scaling and schedule, AdamW groups and kernel, gathering across ranks,
and the construction checks that name the config key of a bad setting.

MoBY (:mod:`mmpretrain.ssl`) and the video modules (:mod:`mmpretrain.video`) both build their optimizers from these,
so a schedule or decay rule is written once. Schedules are pure functions of the global step, so a resumed run
continues them exactly.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mmpretrain.errors import ConfigError

__all__ = [
    "NO_DECAY_KEYWORDS",
    "RankSeed",
    "adamw_kernel",
    "check_choice",
    "check_range",
    "gather_unique",
    "global_batch",
    "param_groups_weight_decay",
    "scaled_lr",
    "warmup_cosine_lr",
    "warmup_cosine_schedule",
]


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    warmup_start_lr: float,
    min_lr: float,
) -> float:
    """The lr of optimizer step `step`, shaped as the official MoBY (Swin) schedule, per iteration.

    Official: timm's ``CosineLRScheduler(t_initial=total_steps, warmup_t=warmup_steps)``, updated with the step's
    index *after* each optimizer step. So step k uses the value at t = k - 1 (step 0 the warmup start): linear from
    `warmup_start_lr` to `base_lr` over the warmup, then `min_lr + (base_lr - min_lr)·(1 + cos(π·t/total))/2` with t
    counted from the first step, warmup included (so the cosine starts a little below `base_lr`).
    """
    t = max(step - 1, 0)
    if warmup_steps > 0 and t < warmup_steps:
        return warmup_start_lr + (base_lr - warmup_start_lr) * t / warmup_steps
    progress = min(t, total_steps) / max(total_steps, 1)
    return min_lr + (base_lr - min_lr) * (math.cos(math.pi * progress) + 1) / 2


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """Linear scaling rule: `base_lr` is quoted per `reference_batch` images."""
    return base_lr * global_batch / reference_batch


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


def check_choice(value: Any, choices: Collection[Any], key: str) -> Any:
    """``value`` if it is one of ``choices``, else a ConfigError naming the config ``key`` and the choices."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {tuple(choices)}")
    return value


def check_range(
    values: Mapping[str, float | int | None],
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse, at construction, a setting outside ``[low, high]`` (``(`` / ``)`` with the ``*_open`` flags).

    ``values`` maps each config key (``model.mvm_ratio``) to its value; ``None`` values are skipped. The error names
    the key and the interval, so a bad ratio fails when the run starts, not at its first step with a bare message.
    """
    for key, value in values.items():
        if value is None:
            continue
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or value != value:  # value != value: NaN
            interval = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                        f"{'inf' if high is None else high}{')' if high_open else ']'}")
            raise ConfigError(f"{key}={value} must be in {interval}")


class RankSeed(pl.Callback):
    """Seed every process with ``seed + global rank`` once the strategy knows the ranks, as the official MoBY does.

    Seeding only before the trainer starts gives every rank the same random stream (a spawned DDP process inherits
    the launcher's), so all ranks would draw the same drop-path masks and augmentations. ``setup`` runs after the
    process group exists, before the first batch, on a fresh run and on a resumed one alike.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.seed is None:
            return
        pl.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)
