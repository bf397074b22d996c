"""Training callbacks every experiment's config can name: the resumable `last.ckpt`, a progress line per epoch for
log files, and a warning when the text encoder cannot read the training texts.

Both use only Lightning's public hooks and ``trainer.save_checkpoint`` (which writes through the checkpoint IO's
temporary-file-then-rename), so they keep working across Lightning releases.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Checkpoint

from mmpretrain.models.coverage import UNKNOWN_SHARE_WARNING, coverage_warning
from mmpretrain.training import check_range

__all__ = ["EpochLog", "LastCheckpoint", "TextCoverage"]

log = logging.getLogger(__name__)


class LastCheckpoint(Checkpoint):
    """``<dirpath>/<filename>.ckpt`` every ``every_n_epochs`` epochs and always when fit ends, so a run shorter than
    the interval (or stopped by ``max_steps``) still leaves the checkpoint its log names and ``ckpt_path=last``
    resumes.

    Args:
        dirpath: the folder of the checkpoint (the run's ``checkpoints/``).
        filename: the file name without ``.ckpt``; each save replaces the previous one.
        every_n_epochs: epochs between saves during training (0: only at the end of fit).
    """

    def __init__(self, dirpath: str | os.PathLike, filename: str = "last", every_n_epochs: int = 1) -> None:
        check_range({"callbacks.last_checkpoint.every_n_epochs": every_n_epochs}, 0)
        self.dirpath = Path(dirpath)
        self.path = self.dirpath / f"{filename}.ckpt"
        self.every_n_epochs = every_n_epochs
        self._saved_step: int | None = None

    def _save(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or self._saved_step == trainer.global_step:
            return
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)


def _scalars(metrics: dict[str, Any], prefix: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix) and not key.endswith("_step"):
            out[key.removesuffix("_epoch")] = float(value.item() if hasattr(value, "item") else value)
    return out


class EpochLog(pl.Callback):
    """One log line per epoch (and every ``every_n_steps`` steps) with the losses, validation metrics and speed.

    A training redirected to a file otherwise shows only the progress bar's final state; these lines go to the
    run's log file through the ``mmpretrain`` logger, on global rank 0.

    Args:
        every_n_steps: also log every this many optimizer steps (0: only at epoch ends).
    """

    def __init__(self, every_n_steps: int = 0) -> None:
        check_range({"callbacks.epoch_log.every_n_steps": every_n_steps}, 0)
        self.every_n_steps = every_n_steps
        self._epoch_start = self._step_start = 0.0
        self._epoch_first_step = self._last_logged_step = 0

    @staticmethod
    def _format(metrics: dict[str, float]) -> str:
        return " ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items()))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._step_start = time.perf_counter()
        self._epoch_first_step = self._last_logged_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        due = self.every_n_steps and step != self._last_logged_step and step % self.every_n_steps == 0
        if not due or not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._step_start
        speed = (step - self._last_logged_step) / elapsed if elapsed > 0 else float("nan")
        losses = _scalars(trainer.callback_metrics, ("train/",))
        log.info("epoch %d step %d: %s (%.2f steps/s)", trainer.current_epoch, step, self._format(losses), speed)
        self._step_start, self._last_logged_step = time.perf_counter(), step

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self._epoch_start
        steps = trainer.global_step - self._epoch_first_step
        metrics = _scalars(trainer.callback_metrics, ("train/", "val/"))
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        log.info("epoch %d/%s: %s (%d steps in %.1f s, %.2f steps/s)", trainer.current_epoch + 1, total,
                 self._format(metrics), steps, elapsed, steps / elapsed if elapsed > 0 else float("nan"))


class TextCoverage(pl.Callback):
    """Warn once, when training starts, if the text encoder's tokenizer cannot read the training titles and OCR
    (more than ``threshold`` of their tokens are ``[UNK]``): see :mod:`mmpretrain.models.coverage`.

    Acts on a datamodule with ``processor.tokenizer`` and ``train_records`` (a video manifest); others pass.
    """

    def __init__(self, threshold: float = UNKNOWN_SHARE_WARNING) -> None:
        check_range({"callbacks.text_coverage.threshold": threshold}, 0.0, 1.0)
        self.threshold = threshold
        self.message: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        records = getattr(data, "train_records", None)
        processor = getattr(data, "processor", None)
        if stage != "fit" or not records or processor is None or not trainer.is_global_zero:
            return
        ocr = (r.ocr if isinstance(r.ocr, str) else " ".join(r.ocr or []) for r in records)
        texts = (text for r, lines in zip(records, ocr) for text in (r.title, lines))
        where = f"the titles and OCR of data.train_manifest={getattr(data.hparams, 'train_manifest', '')}"
        self.message = coverage_warning(processor.tokenizer, texts, where, self.threshold)
        if self.message:
            log.warning(self.message)
