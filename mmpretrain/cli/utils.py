"""Plumbing shared by the Hydra entry points: the task wrapper, instantiation of callbacks and loggers,
W&B online/offline choice, resume lookup, and the sweep's table of trials."""

from __future__ import annotations

import functools
import logging
import netrc
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from mmpretrain.cli.run_folder import in_sweep, remove_failed_run, run_folder, write_run_files
from mmpretrain.errors import ConfigError, MissingPathError, MMPretrainError

log = logging.getLogger(__name__)


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        log.info("closing W&B run %s", wandb.run.id)
        wandb.finish()


_STATE = {"working": False}
_USER_ERRORS = (MMPretrainError, MissingMandatoryValue, InterpolationToMissingValueError, KeyboardInterrupt)


def work_started() -> None:
    """Mark that the task's real work began (training's first step): a failure from now on keeps the run folder."""
    _STATE["working"] = True


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a task with its run record, always close W&B (so a sweep's next trial starts a fresh run), and leave
    nothing behind when a user's mistake stops it before its work started.

    The run folder gets `run.json` (version, git commit, command line) and the resolved `config.yaml` first; the
    config is printed only with `extras.print_config=true`, so a run ends with its results. The exception itself
    is left to the entry point (one line for the project's errors, one traceback for the rest).
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        _STATE["working"] = False
        folder = run_folder(cfg)
        if folder is not None:
            write_run_files(cfg, folder)
        early_failure = False
        try:
            return task(cfg)
        except BaseException as err:
            # a user's mistake (or Ctrl-C) before the work started: nothing to keep; a bug keeps its log
            early_failure = isinstance(err, _USER_ERRORS) and not _STATE["working"]
            if isinstance(err, Exception) and not isinstance(err, _USER_ERRORS):
                log.error("task failed; output dir: %s", cfg.get("paths", {}).get("output_dir"))
            raise
        finally:
            _finish_wandb()
            if early_failure and folder is not None and not in_sweep():
                remove_failed_run(folder, OmegaConf.select(cfg, "paths.log_dir", default=None))

    return wrapped


def apply_extras(cfg: DictConfig) -> None:
    """Optional niceties before a task: silence warnings, print the composed config up front
    (`extras.print_config=true`; by default it is only written into the run folder as `config.yaml`)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    quiet_lightning_tips()


class _NoTips(logging.Filter):
    """Drop Lightning's promotional "💡 Tip" lines (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


_NO_TIPS = _NoTips()


def quiet_lightning_tips() -> None:
    """Silence Lightning's promotional tips on its rank-zero logger (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _NO_TIPS not in logger.filters:
            logger.addFilter(_NO_TIPS)


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate(node)`, with the error a constructor raises instead of Hydra's wrapper around it.

    Hydra reports a range check failing in a constructor as `Error in call to target '...': ValueError(...)
    full_key: ...`; a project error (which names its key already) or a missing mandatory value comes out as itself,
    and Lightning's `MisconfigurationException` as a ConfigError naming `key`.
    """
    from hydra.errors import InstantiationException
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import MissingMandatoryValue

    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, MMPretrainError | MissingMandatoryValue):
            raise cause from None
        if isinstance(cause, MisconfigurationException):
            raise ConfigError(f"{key}: {cause}") from cause
        raise


def check_trainer(trainer: DictConfig) -> None:
    """Refuse a GPU trainer on a machine without one before Lightning does, naming the fix."""
    import torch

    accelerator = str(trainer.get("accelerator", "auto"))
    devices = trainer.get("devices", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} (trainer=gpu or ddp) needs a CUDA GPU and this machine "
                          "has none: use trainer=cpu, or trainer.accelerator=auto")
    if accelerator == "auto" and not torch.cuda.is_available() and isinstance(devices, int) and devices > 1:
        log.warning("trainer.devices=%d on a machine without a GPU starts %d CPU processes; trainer=cpu runs one",
                    devices, devices)


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    """Every `_target_` entry of the callbacks group."""
    if not cfg:
        return []
    entries = [(name, c) for name, c in cfg.items() if isinstance(c, DictConfig) and "_target_" in c]
    return [instantiate(c, f"callbacks.{name}") for name, c in entries]


def wandb_logged_in() -> bool:
    """True when W&B has an API key: the environment, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def instantiate_loggers(cfg: DictConfig | None) -> list[pl.loggers.Logger]:
    """Every `_target_` entry of the logger group; W&B's `offline: auto` becomes offline without a login."""
    if not cfg:
        return []
    loggers = []
    for entry in cfg.values():
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            continue
        kwargs: dict[str, Any] = {}
        if entry.get("offline") == "auto":
            online = wandb_logged_in() and os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled")
            kwargs["offline"] = not online
            if not online:
                log.info("W&B: no login found (or WANDB_MODE=offline); logging offline, sync later with `wandb sync`")
        if entry.get("save_dir"):
            Path(entry.save_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(instantiate(entry, "logger", **kwargs))
    return loggers


def log_hyperparameters(cfg: DictConfig, loggers: list[pl.loggers.Logger]) -> None:
    """Send the whole resolved config to every logger, so a run can be reproduced from its logs."""
    if not loggers:
        return
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(config)


def resolve_ckpt_path(ckpt_path: str | None, log_dir: str | Path, task_name: str) -> str | None:
    """`last` → the newest `last.ckpt` among this experiment's earlier single runs; a path must exist.

    Sweep trials (`multiruns/`) are never picked: each ran with other hyper-parameters than the command resuming.
    """
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        runs = Path(log_dir) / task_name / "runs"
        found = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise MissingPathError(f"ckpt_path=last: no checkpoints/last.ckpt under {runs} (sweep trials under "
                                   "multiruns/ are not resumed this way; pass ckpt_path=<file> for one)")
        log.info("ckpt_path=last: resuming from %s", found[-1])
        return str(found[-1])
    if not Path(ckpt_path).is_file():
        raise MissingPathError(f"ckpt_path={ckpt_path}: file does not exist")
    log.info("resuming from %s", ckpt_path)
    return ckpt_path


def saved_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """Every checkpoint file the trainer's checkpoint callbacks have written and still keep."""
    paths: set[Path] = set()
    for callback in trainer.checkpoint_callbacks:
        folder = getattr(callback, "dirpath", None)
        if folder and Path(folder).is_dir():
            paths.update(Path(callback.dirpath).glob("*.ckpt"))
    return sorted(paths)


def get_metric_value(metrics: dict[str, Any], name: str | None, required: bool = True) -> float | None:
    """The value a sweep optimizes. Missing: an error naming it in a sweep (`required`), else a warning and None,
    since a single run whose validation never ran (fewer epochs than the validation interval) still succeeded."""
    if not name:
        return None
    if name not in metrics:
        message = (f"optimized_metric={name} was not logged; available: {sorted(metrics)} "
                   "(for MoBY's val/knn_top1, set data.knn_train_root and data.knn_val_root, and run at least "
                   "trainer.check_val_every_n_epoch epochs)")
        if required:
            raise ConfigError(message)
        log.warning(message)
        return None
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)


class TrialTable(HydraCallback):
    """Collect each sweep trial's overrides and result; print them as a table when the sweep ends."""

    def __init__(self, metric: str = "") -> None:
        self.metric = metric
        self.rows: list[tuple[int, float | None, str, str]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            value = job_return.return_value
            status = "ok"
        except Exception as err:  # Hydra re-raises the job's own exception here
            value, status = None, f"failed: {type(err).__name__}"
        overrides = " ".join(job_return.overrides or [])
        self.rows.append((len(self.rows), value, status, overrides))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(self.format())

    def format(self) -> str:
        """Trials best first (failed trials last)."""
        ordered = sorted(self.rows, key=lambda r: (r[1] is None, -(r[1] or 0.0)))
        lines = [f"{'trial':>5}  {self.metric or 'value':>14}  {'status':<10}  overrides"]
        for trial, value, status, overrides in ordered:
            shown = "-" if value is None else f"{value:.4f}"
            lines.append(f"{trial:>5}  {shown:>14}  {status:<10}  {overrides}")
        return "\n".join(lines)
