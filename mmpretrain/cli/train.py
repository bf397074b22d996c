"""`mmpretrain-train experiment=<name> [key=value ...]`: any training run, composed by Hydra."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from mmpretrain.cli.entry import _in_sweep, print_outputs, run_hydra, short_errors
from mmpretrain.cli.utils import (
    apply_extras,
    get_metric_value,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    resolve_ckpt_path,
    saved_checkpoints,
    task_wrapper,
)

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Instantiate data, model, callbacks, loggers and trainer from `cfg`, then fit.

    Returns the trainer's final metrics and the objects built, so tests and sweeps can inspect them.
    """
    apply_extras(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "callbacks": callbacks}
    log_hyperparameters(cfg, loggers)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        objects["checkpoints"] = saved_checkpoints(trainer)
        log.info("checkpoints: %s", ", ".join(map(str, objects["checkpoints"])) or "none (no checkpoint callback)")
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    return metrics, objects


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="train.yaml")
@short_errors("mmpretrain-train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's entry; returns the optimized metric for Hydra sweepers."""
    metrics, objects = train(cfg)
    print_outputs("mmpretrain-train", [cfg.paths.output_dir, *objects.get("checkpoints", [])])
    return get_metric_value(metrics, cfg.get("optimized_metric"), required=_in_sweep())


def main(argv: list[str] | None = None) -> None:
    """Console entry: `--version`, short errors and "did you mean" around Hydra."""
    run_hydra("mmpretrain-train", "train.yaml", _hydra_main, argv)


if __name__ == "__main__":
    main()
