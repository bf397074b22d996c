"""`mmpretrain-train experiment=<name> [key=value ...]`: any training run, composed by Hydra."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from mmpretrain.callbacks import LastCheckpoint
from mmpretrain.cli.entry import print_outputs, run_hydra, short_errors
from mmpretrain.cli.run_folder import in_sweep, write_metrics
from mmpretrain.cli.utils import (
    apply_extras,
    check_trainer,
    get_metric_value,
    instantiate,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    resolve_ckpt_path,
    saved_checkpoints,
    task_wrapper,
    work_started,
)
from mmpretrain.errors import ConfigError
from mmpretrain.hub import HubError, build_backbone, load_checkpoint, moby_training_state, safe_torch_load
from mmpretrain.ssl import QueueCheck, warm_start

log = logging.getLogger(__name__)


class _WorkStarted(pl.Callback):
    """From the first training batch on, a failure keeps the run folder (its logs and checkpoints matter)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        work_started()


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Instantiate data, model, callbacks, loggers and trainer from `cfg`, then fit.

    Returns the trainer's final metrics and the objects built, so tests and sweeps can inspect them.
    """
    apply_extras(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    check_trainer(cfg.trainer)
    datamodule: pl.LightningDataModule = instantiate(cfg.data, "data")
    model: pl.LightningModule = instantiate(cfg.model, "model")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if ckpt_path:
        _check_resume(model, ckpt_path)
    if cfg.model.get("init"):
        initialize_model(model, str(cfg.model.init), resuming=ckpt_path is not None)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", callbacks=[*callbacks, QueueCheck(), _WorkStarted()],
                                      logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "callbacks": callbacks}
    log_hyperparameters(cfg, loggers)
    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except SystemExit:
            if trainer.interrupted:
                print(f"mmpretrain-train: {resume_hint(trainer)}", file=sys.stderr)
            raise
        objects["checkpoints"] = saved_checkpoints(trainer)
        log.info("checkpoints: %s", ", ".join(map(str, objects["checkpoints"])) or "none (no checkpoint callback)")
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    return metrics, objects


def _check_resume(model: pl.LightningModule, ckpt_path: str) -> None:
    """Refuse, before anything starts, a checkpoint whose weights do not fit the model (another experiment's)."""
    state = safe_torch_load(ckpt_path).get("state_dict", {})
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    if not (missing or unexpected or shapes):
        return
    example = (f"{shapes[0]} is {tuple(state[shapes[0]].shape)} there, {tuple(own[shapes[0]].shape)} here" if shapes
               else f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}")
    parts = Path(ckpt_path).resolve().parts
    origin = f" (written by experiment={parts[parts.index('runs') - 1]})" if "runs" in parts[1:] else ""
    raise ConfigError(f"ckpt_path={ckpt_path}{origin} does not fit this model: {len(missing)} weights missing, "
                      f"{len(unexpected)} unexpected, {len(shapes)} of another shape (e.g. {example}); resume with "
                      "the experiment= and model.* it was trained with, or start from its weights with "
                      "model.init=<checkpoint> instead of ckpt_path")


def resume_hint(trainer: pl.Trainer) -> str:
    """What Ctrl-C prints: where training stopped, the checkpoint a resume starts from, and the command."""
    args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
    command = shlex.join(["mmpretrain-train", *args, "ckpt_path=last"])
    last = next((c.path for c in trainer.callbacks if isinstance(c, LastCheckpoint) and c.path.is_file()), None)
    where = f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}"
    if last is None:
        return f"interrupted at {where} before any last.ckpt was written: nothing to resume, start again"
    return f"interrupted at {where}; resume from {last} with:\n  {command}"


def _hub_weights(source: str, architecture: dict[str, Any]) -> tuple[dict, dict, str]:
    """What `model.init=<source>` gives, read by the hub: backbone weights, MoBY training state, format."""
    loaded = load_checkpoint(source, architecture=architecture)
    try:
        backbone = build_backbone(loaded)
    except HubError as err:
        raise ConfigError(f"model.init={source}: its backbone does not fit model.backbone={architecture['name']} "
                          f"(model.backbone_kwargs={architecture['kwargs']}): {err}") from err
    return backbone.state_dict(), moby_training_state(loaded), loaded.format


def initialize_model(model: pl.LightningModule, source: str, resuming: bool = False) -> dict[str, str]:
    """``model.init=<source>``: continued pretraining from any checkpoint ``load_encoder`` reads (see
    :func:`mmpretrain.ssl.warm_start.warm_start`)."""
    return warm_start(model, source, _hub_weights, resuming=resuming)


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="train.yaml")
@short_errors("mmpretrain-train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's entry; returns the optimized metric for Hydra sweepers."""
    metrics, objects = train(cfg)
    final = {k: float(v.item() if hasattr(v, "item") else v) for k, v in sorted(metrics.items())}
    trainer = objects["trainer"]
    record = {"task": cfg.task_name, "epochs": trainer.current_epoch, "steps": trainer.global_step, **final}
    write_metrics(cfg.paths.output_dir, record)
    print_outputs("mmpretrain-train", [cfg.paths.output_dir, *objects.get("checkpoints", [])])
    value = get_metric_value(metrics, cfg.get("optimized_metric"), required=in_sweep())
    print(final_summary(final, trainer.current_epoch, trainer.global_step))
    return value


def final_summary(metrics: dict[str, float], epochs: int, steps: int) -> str:
    """The last lines of a training: its final metrics, one per line (what W&B's run summary shows)."""
    width = max((len(k) for k in metrics), default=0)
    lines = [f"final metrics after {epochs} epochs ({steps} steps):"]
    lines += [f"  {key:<{width}}  {value:.4f}" for key, value in metrics.items()] or ["  (none logged)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry: `--version`, short errors and "did you mean" around Hydra."""
    run_hydra("mmpretrain-train", "train.yaml", _hydra_main, argv)


if __name__ == "__main__":
    main()
