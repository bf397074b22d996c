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
from mmpretrain.hub import HubError, build_backbone, load_checkpoint, moby_training_state

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
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name)
    if cfg.model.get("init"):
        initialize_model(model, str(cfg.model.init), resuming=ckpt_path is not None)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "callbacks": callbacks}
    log_hyperparameters(cfg, loggers)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        objects["checkpoints"] = saved_checkpoints(trainer)
        log.info("checkpoints: %s", ", ".join(map(str, objects["checkpoints"])) or "none (no checkpoint callback)")
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    return metrics, objects


def initialize_model(model: pl.LightningModule, source: str, resuming: bool = False) -> dict[str, str]:
    """``model.init=<source>``: continued pretraining from any checkpoint ``load_encoder`` reads.

    The backbone comes from the hub (registry name, URL, file or published folder; official MoBY and timm files are
    read with the model's own architecture); an official MoBY file or a MoBY training checkpoint also gives the
    target backbone, the heads and the queues. The log says which parts were restored and which start fresh.
    A resumed run (``ckpt_path``) takes everything from its checkpoint instead.
    """
    if resuming:
        log.info("model.init=%s is ignored: resuming from ckpt_path restores every weight", source)
        return {}
    if not hasattr(model, "initialize_from"):
        raise ValueError(f"model.init={source}: {type(model).__name__} cannot start from a checkpoint")
    hp = model.hparams
    architecture = {"name": hp.backbone, "kwargs": dict(hp.get("backbone_kwargs") or {})}
    loaded = load_checkpoint(source, architecture=architecture)
    try:
        backbone = build_backbone(loaded)
    except HubError as err:
        raise ValueError(f"model.init={source}: its backbone does not fit model.backbone={hp.backbone} "
                         f"(model.backbone_kwargs={architecture['kwargs']}): {err}") from err
    report = model.initialize_from(backbone.state_dict(), moby_training_state(loaded), source)
    log.info("model.init=%s (%s format):\n%s", source, loaded.format,
             "\n".join(f"  {part}: {what}" for part, what in report.items()))  # fmt: skip
    return report


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
