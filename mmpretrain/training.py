"""Pieces every method here trains with: lr scaling and schedule, AdamW groups and kernel, gathering across ranks,
and the construction checks that name the config key of a bad setting.

MoBY (:mod:`mmpretrain.ssl`) and the video modules (:mod:`mmpretrain.video`) both build their optimizers from these,
so a schedule or decay rule is written once. Schedules are pure functions of the global step, so a resumed run
continues them exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "NO_DECAY_KEYWORDS",
    "RankSeed",
    "TimeBudget",
    "adamw_kernel",
    "budget_horizon",
    "check_choice",
    "check_range",
    "gather_unique",
    "global_batch",
    "param_groups_weight_decay",
    "scaled_lr",
    "warmup_cosine_lr",
    "warmup_cosine_schedule",
    "warmup_steps",
]


def warmup_cosine_lr(
    step: int,
    total_steps: float,
    warmup_steps: float,
    base_lr: float,
    warmup_start_lr: float,
    min_lr: float,
) -> float:
    """The lr of optimizer step `step`, shaped as the official MoBY (Swin) schedule, per iteration.

    Official: timm's ``CosineLRScheduler(t_initial=total_steps, warmup_t=warmup_steps)``, updated with the step's
    index *after* each optimizer step. So step k uses the value at t = k - 1 (step 0 the warmup start): linear from
    `warmup_start_lr` to `base_lr` over the warmup, then `min_lr + (base_lr - min_lr)·(1 + cos(π·t/total))/2` with t
    counted from the first step, warmup included (so the cosine starts a little below `base_lr`).

    ``total_steps`` is ``inf`` while a time budget has not fixed its horizon yet (:class:`TimeBudget`): the lr waits
    at `warmup_start_lr` for those few calibration steps.
    """
    if not math.isfinite(total_steps):
        return warmup_start_lr
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


def warmup_steps(
    total_steps: float, steps_per_epoch: int, warmup_epochs: float, warmup_fraction: float | None = None
) -> float:
    """Optimizer steps of linear warmup: ``warmup_fraction`` of the whole schedule when given (a budgeted run, whose
    length in epochs depends on the set's size), else ``warmup_epochs`` epochs.

    Example: ``warmup_steps(5400, 20, 5, 0.0185) == warmup_steps(5400, 20, 5) == 100``.
    """
    if warmup_fraction is None:
        return int(warmup_epochs * steps_per_epoch)
    return round(warmup_fraction * total_steps) if math.isfinite(total_steps) else math.inf


def warmup_cosine_schedule(
    module: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    lr: float,
    min_lr: float,
    warmup_epochs: float,
    warmup_start_lr: float | None = None,
    warmup_fraction: float | None = None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` return value: per-step linear warmup (see :func:`warmup_steps`), then
    cosine down to ``min_lr`` at the trainer's last optimizer step.

    ``lr`` / ``min_lr`` / ``warmup_start_lr`` are already scaled (see :func:`global_batch`); the warmup starts at
    ``warmup_start_lr`` (default ``lr / 100``). Every parameter group keeps its own ratio to ``lr``. The length is
    read from the trainer at each step, so a budget (``trainer.max_steps``, or :class:`TimeBudget` fixing it from
    the measured step time) lays the schedule over itself.
    """
    trainer = module.trainer
    timed = any(isinstance(c, TimeBudget) and c.budget_s is not None for c in trainer.callbacks)
    if not timed and not math.isfinite(trainer.estimated_stepping_batches):
        raise ConfigError(f"trainer.max_epochs={trainer.max_epochs} and trainer.max_steps={trainer.max_steps}: the lr "
                          "schedule needs an end; set trainer.max_steps, trainer.max_epochs or budget_minutes")
    steps_per_epoch = max(trainer.num_training_batches // trainer.accumulate_grad_batches, 1)
    start = lr / 100 if warmup_start_lr is None else warmup_start_lr

    def factor(step: int) -> float:
        total = trainer.estimated_stepping_batches
        warmup = warmup_steps(total, steps_per_epoch, warmup_epochs, warmup_fraction)
        return warmup_cosine_lr(step, total, warmup, lr, start, min_lr) / lr

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


def budget_horizon(step: int, elapsed_s: float, budget_s: float, seconds_per_step: float) -> int:
    """The last optimizer step a time budget reaches: ``step`` plus the steps the time left holds at the measured
    rate (at least ``step``: a spent budget ends now).

    Example: 100 steps done in 30 s of a 300 s budget at 0.25 s a step: ``budget_horizon(100, 30, 300, 0.25) == 1180``.
    """
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step={seconds_per_step} must be > 0")
    return step + max(int((budget_s - elapsed_s) / seconds_per_step), 0)


class TimeBudget(pl.Callback):
    """``budget_minutes=N``: train for N minutes of wall time, with the lr and momentum schedules laid over them.

    The schedules are functions of the step and of the trainer's last step (``trainer.max_steps``), so a time budget
    becomes a step budget: after ``calibration_steps`` steps (the lr waits at the warmup's start meanwhile) the step
    time is measured and ``max_steps`` set to the step the budget reaches (:func:`budget_horizon`); every
    ``every`` steps the estimate is renewed from the mean step time since calibration began (validation,
    checkpoints and a busier machine included), and the run stops when the budget is spent even if the estimate was
    short. The time spent, the measurement and the horizon are saved in checkpoints, so a resumed run continues the
    same schedule with the time left (the time the run was down is not counted). Rank 0 measures and decides; every
    rank follows it. ``minutes=None`` does nothing (epoch or step limits).

    Example: ``Trainer(max_epochs=-1, callbacks=[TimeBudget(10)])``, or ``mmpretrain-train experiment=moby_small
    budget_minutes=10``.
    """

    def __init__(self, minutes: float | None, calibration_steps: int = 20, every: int = 50,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if minutes is not None and not minutes > 0:
            raise ConfigError(f"budget_minutes={minutes} must be > 0 (or null: no time budget)")
        if calibration_steps < 1 or every < 1:
            raise ConfigError(f"TimeBudget: calibration_steps={calibration_steps} and every={every} must be >= 1")
        self.budget_s = None if minutes is None else 60.0 * float(minutes)
        self.calibration_steps, self.every, self.clock = calibration_steps, every, clock
        self.horizon: int | None = None
        self.spent_s = 0.0  # before this fit (a resumed run)
        self.mark: tuple[int, float] | None = None  # (step, seconds spent) where the step time is measured from
        self._started: float | None = None

    def elapsed(self) -> float:
        """Seconds of training spent so far, over every fit of the run."""
        return self.spent_s + (self.clock() - self._started if self._started is not None else 0.0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.budget_s is None or stage != "fit":
            return
        if trainer.max_epochs not in (-1, None) or trainer.max_steps != -1:
            log.info("budget_minutes=%g replaces trainer.max_epochs=%s and trainer.max_steps=%s", self.budget_s / 60,
                     trainer.max_epochs, trainer.max_steps)
        trainer.fit_loop.max_epochs = -1
        trainer.fit_loop.min_epochs = 0
        trainer.fit_loop.epoch_loop.max_steps = -1  # unknown until measured: the schedules wait at their start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.budget_s is None:
            return
        if self.horizon is not None:  # restored from a checkpoint
            trainer.fit_loop.epoch_loop.max_steps = self.horizon
        self._started = self.clock()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.budget_s is None:
            return
        step, elapsed = trainer.global_step, self.elapsed()
        if self.mark is None:  # the first step pays for worker start-up: measure from its end
            self.mark = (step, elapsed)
            return
        measured = step - self.mark[0]
        horizon = None
        if elapsed >= self.budget_s:
            horizon = step
        elif measured >= self.calibration_steps and (self.horizon is None or measured % self.every == 0):
            horizon = budget_horizon(step, elapsed, self.budget_s, (elapsed - self.mark[1]) / measured)
        horizon = trainer.strategy.broadcast(horizon, src=0)
        if horizon is None or horizon == self.horizon:
            return
        if self.horizon is None:
            log.info("budget_minutes=%g: %.3f s a step, so %d steps; the schedules are laid over them",
                     self.budget_s / 60, (elapsed - self.mark[1]) / measured, horizon)
        self.horizon = horizon
        trainer.fit_loop.epoch_loop.max_steps = horizon

    def state_dict(self) -> dict[str, Any]:
        return {"budget_s": self.budget_s, "horizon": self.horizon, "spent_s": self.elapsed(),
                "mark": list(self.mark) if self.mark else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("budget_s") != self.budget_s:  # another budget on resume: measured again over the new one
            log.info("budget_minutes changed on resume (%s s -> %s s): the horizon is measured again",
                     state_dict.get("budget_s"), self.budget_s)
            return
        self.horizon, self.spent_s = state_dict["horizon"], float(state_dict["spent_s"])
        self.mark = tuple(state_dict["mark"]) if state_dict.get("mark") else None
