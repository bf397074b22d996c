"""The pure parts of video classification and tagging: class weights, metric summaries, reports, predictions.

Plain numpy/torch functions without Lightning, shared by :class:`~mmpretrain.video.train.finetune.VideoFinetune` and the
linear probe on embedding stores (:mod:`~mmpretrain.video.eval.store_probe`), so both report the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mmpretrain.errors import ConfigError
from mmpretrain.video.eval.metrics import (
    apply_thresholds,
    average_precision_per_tag,
    gap_at_k,
    mean_average_precision,
    multilabel_f1,
    precision_recall_at_k,
    topk_accuracy,
)
from mmpretrain.video.io.manifest import VideoRecord

__all__ = [
    "TASKS",
    "WEIGHTINGS",
    "check_task",
    "check_weighting",
    "class_weights",
    "classification_metrics",
    "json_safe",
    "label_counts",
    "prediction_records",
    "tag_counts",
    "tag_pos_weights",
    "tagging_metrics",
    "tagging_report",
]

TASKS = ("classify", "tagging")
WEIGHTINGS = ("none", "inverse_sqrt", "inverse")
def check_task(task: str, key: str = "model.task") -> str:
    """``task`` if it is one of :data:`TASKS`, else a ValueError naming ``key``."""
    if task not in TASKS:
        raise ConfigError(f"{key}={task!r} is not one of {TASKS}")
    return task


def label_counts(records: Sequence[VideoRecord], names: Sequence[str]) -> np.ndarray:
    """Training videos per class, in ``names`` order (records without a label are not counted)."""
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros(len(names), dtype=np.int64)
    for record in records:
        if record.label in index:
            counts[index[record.label]] += 1
    return counts


def tag_counts(records: Sequence[VideoRecord], names: Sequence[str]) -> np.ndarray:
    """Training videos carrying each tag, in ``names`` order."""
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros(len(names), dtype=np.int64)
    for record in records:
        for tag in set(record.tags):
            if tag in index:
                counts[index[tag]] += 1
    return counts


def check_weighting(mode: str) -> None:
    """A ValueError naming ``model.class_weighting`` unless ``mode`` is one of :data:`WEIGHTINGS`."""
    if mode not in WEIGHTINGS:
        raise ConfigError(f"model.class_weighting={mode!r} is not one of {WEIGHTINGS}")


def class_weights(counts: Sequence[int] | np.ndarray, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights from training counts; ``None`` for ``mode="none"``.

    ``inverse`` gives w_c ∝ 1/n_c (every class weighs the same in total), ``inverse_sqrt`` the softer w_c ∝ 1/√n_c.
    Weights are scaled so the mean weight over the training videos is 1, which keeps the loss scale (and a learning
    rate tuned without weighting) comparable. A class without training videos counts as one.
    """
    check_weighting(mode)
    if mode == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ConfigError("model.class_weighting needs labelled training videos; the training manifest has none")
    clamped = np.maximum(counts, 1.0)
    raw = 1.0 / clamped if mode == "inverse" else 1.0 / np.sqrt(clamped)
    return torch.tensor(raw * counts.sum() / (raw * counts).sum(), dtype=torch.float32)


def tag_pos_weights(positives: Sequence[int] | np.ndarray, total: int, mode: str) -> torch.Tensor | None:
    """BCE ``pos_weight`` per tag: negatives / positives (``inverse``) or its square root; ``None`` for ``none``.

    Without it a rare tag learns to always answer no. Counts are clamped at one, so a tag on every (or no) training
    video still gets a finite, positive weight.
    """
    check_weighting(mode)
    if mode == "none":
        return None
    positives = np.asarray(positives, dtype=np.float64)
    ratio = np.maximum(total - positives, 1.0) / np.maximum(positives, 1.0)
    return torch.tensor(ratio if mode == "inverse" else np.sqrt(ratio), dtype=torch.float32)


def classification_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """``{"top1", "top5"}`` in percent (k beyond the number of classes counts as all classes)."""
    accuracy = topk_accuracy(scores, labels, ks=(1, 5))
    return {"top1": accuracy[1], "top5": accuracy[5]}


def tagging_metrics(scores: Any, targets: Any, thresholds: Any) -> dict[str, float]:
    """mAP, GAP@20, P@5, R@5 of the ranking and micro / macro F1 of the thresholded predictions (fractions)."""
    precision, recall = precision_recall_at_k(scores, targets, 5)
    f1 = multilabel_f1(apply_thresholds(scores, thresholds), targets)
    return {
        "mAP": mean_average_precision(scores, targets),
        "gap20": gap_at_k(scores, targets, 20),
        "p@5": precision,
        "r@5": recall,
        "f1_micro": f1["micro"],
        "f1_macro": f1["macro"],
    }


def tagging_report(scores: Any, targets: Any, names: Sequence[str], thresholds: Any) -> list[dict[str, Any]]:
    """Per tag: support, AP (NaN without positives), threshold, and precision / recall / F1 at that threshold."""
    targets = np.asarray(targets).astype(bool)
    predicted = apply_thresholds(scores, thresholds)
    aps = average_precision_per_tag(scores, targets)
    rows = []
    for t, name in enumerate(names):
        tp = int((predicted[:, t] & targets[:, t]).sum())
        n_predicted, support = int(predicted[:, t].sum()), int(targets[:, t].sum())
        precision = tp / n_predicted if n_predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"name": str(name), "support": support, "ap": float(aps[t]), "threshold": float(thresholds[t]),
                     "precision": precision, "recall": recall, "f1": f1})
    return rows


def json_safe(value: Any) -> Any:
    """NaN and infinities as ``None``, so reports stay strict JSON (a tag without positives: AP NaN, threshold inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def prediction_records(
    ids: Sequence[str],
    scores: np.ndarray,
    names: Sequence[str],
    task: str,
    top_k: int = 5,
    thresholds: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready record per video: its ``top_k`` labels (or tags) with scores, best first.

    Tagging records also list under ``predicted`` every tag whose score reaches its threshold, best first.
    """
    check_task(task, "task")
    order = np.argsort(-scores, axis=1, kind="stable")
    key, field = ("labels", "label") if task == "classify" else ("tags", "tag")
    records = []
    for row, video in enumerate(ids):
        record: dict[str, Any] = {"id": str(video), key: [{field: names[j], "score": float(scores[row, j])}
                                                          for j in order[row, :top_k]]}
        if task == "tagging" and thresholds is not None:
            record["predicted"] = [names[j] for j in order[row] if scores[row, j] >= thresholds[j]]
        records.append(record)
    return records
