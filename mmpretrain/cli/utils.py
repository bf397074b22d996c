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
from pytorch_lightning.callbacks import ModelCheckpoint

from mmpretrain.data.sources import IMAGE_EXTENSIONS
from mmpretrain.errors import ConfigError, MissingPathError, MMPretrainError

log = logging.getLogger(__name__)


def _is_labeled_folder(path: Path) -> bool:
    """One subfolder per class holding images (the ImageFolder layout the kNN monitor reads)."""
    return path.is_dir() and any(
        sub.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in sub.iterdir()) for sub in path.iterdir()
    )


def split_beside(root: str | None, split: str) -> str | None:
    """`<parent of root>/<split>` when that parent holds labeled `train/` and `val/` folders, else None.

    The `mmpretrain.split_beside` resolver: an experiment turns its kNN monitor on for `data.root=<x>/train` with a
    labeled `<x>/val` beside it (the demo's layout), and off for a user's folder without them, instead of failing on
    folders the user never named.
    """
    if not root:
        return None
    parent = Path(str(root)).expanduser().parent
    if all(_is_labeled_folder(parent / s) for s in ("train", "val")):
        return str(parent / split)
    return None


if not OmegaConf.has_resolver("mmpretrain.split_beside"):
    OmegaConf.register_new_resolver("mmpretrain.split_beside", split_beside)


def _finish_wandb() -> None:
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        log.info("closing W&B run %s", wandb.run.id)
        wandb.finish()


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a task and always close W&B, even on failure, so a sweep's next trial starts a fresh run.

    The exception itself is left to the entry point (one line for the project's errors, one traceback for the
    rest); on success the resolved config is logged unless `extras.print_config` already printed it up front.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            result = task(cfg)
        except Exception as err:
            if not isinstance(err, MMPretrainError):
                log.error("task failed; output dir: %s", cfg.get("paths", {}).get("output_dir"))
            raise
        finally:
            _finish_wandb()
        if (cfg.get("extras") or {}).get("print_config", False) is None:
            log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
        return result

    return wrapped


def apply_extras(cfg: DictConfig) -> None:
    """Optional niceties before a task: silence warnings, print the composed config up front
    (`extras.print_config=true`; the default, null, prints it when the task succeeded)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    """Every `_target_` entry of the callbacks group."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


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
        loggers.append(hydra.utils.instantiate(entry, **kwargs))
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


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_epochs` epochs and always when fit ends, so a run shorter than the interval (or
    stopped by `max_steps`) still leaves the checkpoint its log names and `ckpt_path=last` resumes."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


def saved_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """Every checkpoint file the trainer's checkpoint callbacks have written and still keep."""
    paths: set[Path] = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath).is_dir():
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
                   "trainer.check_val_every_n_epoch epochs)")  # fmt: skip
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
