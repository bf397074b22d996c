"""`mmpretrain-eval task=<knn|linear> encoder=<checkpoint> data.train_root=... data.val_root=...`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from mmpretrain.cli.utils import (
    apply_extras,
    get_metric_value,
    instantiate_loggers,
    log_hyperparameters,
    task_wrapper,
)
from mmpretrain.hub import build_backbone, load_checkpoint
from mmpretrain.models import create_backbone
from mmpretrain.ssl import LinearProbe, extract_features, knn_accuracy

log = logging.getLogger(__name__)

TASKS = ("knn", "linear")


def load_eval_backbone(source: str, random_init: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's backbone, or the same architecture at (seeded) random init, and its preprocessing."""
    loaded = load_checkpoint(source)
    if random_init:
        arch = loaded.config["architecture"]
        backbone = create_backbone(arch["name"], **arch.get("kwargs", {}))
    else:
        backbone = build_backbone(loaded)
    return backbone, loaded.config["preprocessing"]


def _device(trainer_cfg: DictConfig) -> str:
    wants_gpu = trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Score a frozen encoder on a labeled train/val pair; writes `metrics.json` into the run folder."""
    apply_extras(cfg)
    name = cfg.task.name
    if name not in TASKS:
        raise ValueError(f"task={name} is not available here; choose one of {TASKS}")
    pl.seed_everything(cfg.seed, workers=True)
    backbone, prep = load_eval_backbone(str(cfg.encoder), bool(cfg.random_init))
    datamodule = hydra.utils.instantiate(
        cfg.data,
        image_size=prep["image_size"],
        mean=list(prep["mean"]),
        std=list(prep["std"]),
        eval_crop_pct=prep.get("crop_pct", 0.875),
    )
    loggers = instantiate_loggers(cfg.get("logger"))
    log_hyperparameters(cfg, loggers)
    if name == "knn":
        bank_loader, query_loader = datamodule.eval_loaders()
        device = _device(cfg.trainer)
        bank = extract_features(backbone, bank_loader, device)
        query = extract_features(backbone, query_loader, device)
        scores = knn_accuracy(*bank, *query, k=cfg.task.k, temperature=cfg.task.temperature)
        metrics = {"knn/top1": scores["top1"], "knn/top5": scores["top5"]}
        for logger in loggers:
            logger.log_metrics(metrics)
    else:
        model = LinearProbe(
            backbone,
            datamodule.num_classes,
            base_lr=cfg.task.base_lr,
            lr_ref_batch=cfg.task.lr_ref_batch,
            momentum=cfg.task.momentum,
            weight_decay=cfg.task.weight_decay,
            label_smoothing=cfg.task.label_smoothing,
        )
        trainer: pl.Trainer = hydra.utils.instantiate(
            cfg.trainer, max_epochs=cfg.task.epochs, logger=loggers or False, enable_checkpointing=False
        )
        trainer.fit(model, datamodule=datamodule)
        metrics = {f"linear/{k.split('/')[-1]}": float(v) for k, v in trainer.validate(model, datamodule)[0].items()}
    metrics = {k: float(v) for k, v in metrics.items()}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"task": name, "encoder": str(cfg.encoder), "random_init": bool(cfg.random_init), **metrics}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record))
    return metrics, {"backbone": backbone, "datamodule": datamodule}


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="eval.yaml")
def main(cfg: DictConfig) -> float | None:
    """Console entry; returns top-1 of the chosen task for sweeps."""
    metrics, _ = evaluate(cfg)
    return get_metric_value(metrics, f"{cfg.task.name}/top1")


if __name__ == "__main__":
    main()
