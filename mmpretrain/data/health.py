"""Counts unreadable inputs as batches arrive and aborts a run whose data is too broken to trust."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch

from mmpretrain.errors import ConfigError, FailureRateError

log = logging.getLogger(__name__)


class DataHealthMonitor(pl.Callback):
    """Sum the per-sample `failed` counts that `ImageDataset` and `VideoTextDataset` put in each batch.

    Video batches also carry `failed_reasons` (missing, empty, truncated, ...): they are tallied so the final
    warning says what went wrong, not only how often.

    Args:
        max_failure_rate: abort when failed / attempted exceeds this (data.max_failure_rate).
        min_attempts: judge the rate only after this many attempted reads, so one early bad file in a
            small dataset does not end the run.
    """

    def __init__(self, max_failure_rate: float = 0.01, min_attempts: int = 100) -> None:
        if not 0 <= max_failure_rate <= 1:
            raise ConfigError(f"data.max_failure_rate={max_failure_rate} must be in [0, 1]")
        self.max_failure_rate = max_failure_rate
        self.min_attempts = min_attempts
        self.failed = 0
        self.attempted = 0
        self.reasons: dict[str, int] = {}

    def _count(self, pl_module: pl.LightningModule, batch: Any) -> None:
        if not isinstance(batch, dict) or "failed" not in batch:
            return
        failed = int(torch.as_tensor(batch["failed"]).sum().item())
        for reasons in batch.get("failed_reasons") or ():
            for reason in filter(None, str(reasons).split(",")):
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.failed += failed
        self.attempted += failed + len(batch["failed"])
        if failed:
            pl_module.log("data/failed_total", float(self.failed), on_step=True, on_epoch=False)
        rate = self.failed / max(self.attempted, 1)
        if self.attempted >= self.min_attempts and rate > self.max_failure_rate:
            allow = min(1.0, round(rate * 2 + 0.005, 2))
            raise FailureRateError(
                f"{self.failed} of {self.attempted} reads failed ({rate:.1%}{self._reason_text()}), above "
                f"data.max_failure_rate={self.max_failure_rate:.1%}; fix or remove the files the warnings above "
                f"name, or accept that many failures with data.max_failure_rate={allow}"
            )

    def _reason_text(self) -> str:
        return "; " + ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) if self.reasons else ""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx):
        self._count(pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._count(pl_module, batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.failed:
            log.warning(
                "skipped %d unreadable files out of %d reads%s", self.failed, self.attempted, self._reason_text()
            )
