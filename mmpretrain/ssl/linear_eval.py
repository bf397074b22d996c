"""The two classic scores of a frozen self-supervised backbone on a labeled train/val pair: weighted kNN and the
linear probe, each returning its metrics under the task's name (``knn/top1``, ``linear/top5``, ...).

Usage::

    from mmpretrain.ssl.linear_eval import knn_evaluate
    metrics = knn_evaluate(backbone, datamodule, device="cpu", k=20, temperature=0.07)  # {"knn/top1": ..., ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmpretrain.ssl.evaluation import LinearProbe, extract_features
from mmpretrain.ssl.knn import knn_accuracy

__all__ = ["knn_evaluate", "linear_evaluate"]


class LabeledPair(Protocol):
    """A datamodule with a labeled train split (the bank / the probe's training set) and a val split."""

    num_classes: int

    def eval_loaders(self) -> tuple[DataLoader, DataLoader]: ...


def knn_evaluate(
    backbone: nn.Module, datamodule: LabeledPair, device: str | torch.device, k: int = 20, temperature: float = 0.07
) -> dict[str, float]:
    """Weighted kNN top-1/top-5 (percent) of the val split against a bank of the train split's features."""
    bank_loader, query_loader = datamodule.eval_loaders()
    bank = extract_features(backbone, bank_loader, device, progress="kNN bank (data.train_root)")
    query = extract_features(backbone, query_loader, device, progress="kNN queries (data.val_root)")
    scores = knn_accuracy(*bank, *query, k=k, temperature=temperature)
    return {"knn/top1": float(scores["top1"]), "knn/top5": float(scores["top5"])}


def linear_evaluate(
    backbone: nn.Module, datamodule: pl.LightningDataModule, trainer: pl.Trainer, recipe: Mapping[str, Any]
) -> dict[str, float]:
    """Train a linear head on the frozen backbone for the trainer's epochs, then validate it.

    ``recipe`` holds :class:`~mmpretrain.ssl.LinearProbe`'s settings (``base_lr``, ``lr_ref_batch``, ``momentum``,
    ``weight_decay``, ``label_smoothing``); other keys are ignored.
    """
    keys = ("base_lr", "lr_ref_batch", "momentum", "weight_decay", "label_smoothing")
    model = LinearProbe(backbone, datamodule.num_classes, **{key: recipe[key] for key in keys if key in recipe})
    trainer.fit(model, datamodule=datamodule)
    return {f"linear/{k.split('/')[-1]}": float(v) for k, v in trainer.validate(model, datamodule)[0].items()}
