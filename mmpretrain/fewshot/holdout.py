"""How good a few-shot classifier is on *these* classes: held-out accuracy with a bootstrap CI, the learning curve
over shots, the per-class confusion, and several encoders side by side.

Every support picture is classified by the classifier fitted on the others (leave-one-out; stratified k-fold past
``loo_limit`` pictures). That is the number a user with one task needs: episodic means over other classes are not.

Usage::

    from mmpretrain.fewshot import estimate_embeddings
    report = estimate_embeddings(features, labels, method="simpleshot")
    report.accuracy, report.ci95, report.curve, report.confusion
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mmpretrain.errors import ConfigError, DataError
from mmpretrain.fewshot.calibration import held_out
from mmpretrain.fewshot.methods import METHODS, get_method
from mmpretrain.fewshot.sampling import encode_labels

__all__ = ["SHOTS", "Estimate", "bootstrap_ci", "estimate_embeddings", "held_out_predictions", "learning_curve"]

SHOTS = (1, 2, 3, 5, 10, 20, 50, 100)
"""Shots per class the learning curve is measured at (those the support set leaves a query for)."""


def bootstrap_ci(correct: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (%) of per-picture outcomes ``correct``."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        raise DataError("no held-out predictions to put an interval on")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, correct.size, size=(resamples, correct.size))].mean(axis=1) * 100
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _method_scores(method: str, support: np.ndarray, codes: np.ndarray, query: np.ndarray, n_classes: int,
                   base_mean: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    fn = get_method(method)
    kwargs = dict(options)
    if "base_mean" in inspect.signature(fn).parameters:
        kwargs["base_mean"] = torch.as_tensor(base_mean)
    with torch.no_grad():
        return fn(torch.as_tensor(support)[None], torch.as_tensor(codes)[None], torch.as_tensor(query)[None],
                  n_classes, **kwargs)[0].numpy()


def held_out_predictions(features: np.ndarray, codes: np.ndarray, n_classes: int, method: str = "simpleshot",
                         loo_limit: int = 1000, folds: int = 10, seed: int = 0, **options: Any,
                         ) -> tuple[np.ndarray, np.ndarray, str]:
    """Each picture's class as predicted by the classifier fitted without it (see
    :func:`~mmpretrain.fewshot.calibration.held_out`).

    Returns:
        ``(predicted (S,), usable (S,), protocol)``: rows whose class had no other example in the fitted part are
        not usable (their class cannot be predicted at all).
    """
    scores, _, usable, protocol = held_out(features, codes, n_classes, method, features.mean(axis=0), loo_limit,
                                           folds, seed, **options)
    return scores.argmax(axis=1), usable, protocol


def learning_curve(features: np.ndarray, codes: np.ndarray, n_classes: int, method: str = "simpleshot",
                   shots: Sequence[int] = SHOTS, trials: int = 20, seed: int = 0, **options: Any,
                   ) -> list[dict[str, float]]:
    """Accuracy (%) with ``k`` pictures per class, every other picture a query, over ``trials`` seeded draws.

    Only shots that leave every class at least one query are measured. ``ci95`` is the normal interval of the mean
    over draws (which pictures happen to be the support).
    """
    counts = np.bincount(codes, minlength=n_classes)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(codes == c) for c in range(n_classes)]
    curve = []
    for k in [k for k in shots if k < counts.min()]:
        accuracies = []
        for _ in range(trials):
            picks = [rng.permutation(rows) for rows in by_class]
            support = np.concatenate([p[:k] for p in picks])
            query = np.concatenate([p[k:] for p in picks])
            base_mean = features[support].mean(axis=0)
            scores = _method_scores(method, features[support], codes[support], features[query], n_classes,
                                    base_mean, options)
            accuracies.append(float((scores.argmax(axis=1) == codes[query]).mean() * 100))
        values = np.asarray(accuracies)
        ci = 1.96 * values.std(ddof=1) / math.sqrt(trials) if trials > 1 else 0.0
        curve.append({"shots": k, "accuracy": float(values.mean()), "ci95": float(ci), "trials": trials})
    return curve


@dataclass
class Estimate:
    """The estimate of one encoder on one support set (all accuracies in %).

    Attributes:
        encoder: its name. method: the few-shot method. protocol: leave-one-out or stratified k-fold.
        accuracy / ci95: held-out accuracy and its bootstrap 95% interval ``[low, high]``.
        rows: held-out pictures counted. classes: class names. confusion: ``[true][predicted]`` counts.
        per_class: accuracy per class. curve: the learning curve (see :func:`learning_curve`).
    """

    encoder: str
    method: str
    protocol: str
    accuracy: float
    ci95: tuple[float, float]
    rows: int
    classes: list[str]
    confusion: list[list[int]]
    per_class: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)
    random_init: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_embeddings(features: np.ndarray, labels: Sequence[Any], method: str = "simpleshot",
                        encoder: str = "embeddings", shots: Sequence[int] = SHOTS, trials: int = 20,
                        loo_limit: int = 1000, folds: int = 10, seed: int = 0, resamples: int = 2000,
                        random_init: bool = False, **options: Any) -> Estimate:
    """Held-out accuracy with a bootstrap CI, confusion and learning curve for labelled embeddings.

    Raises:
        DataError: fewer than 2 classes, or no class with 2 pictures (nothing can be held out).
    """
    if method not in METHODS:
        hint = " (finetune's leave-one-out estimate comes with mmpretrain-fewshot fit)" if method == "finetune" else ""
        raise ConfigError(f"method={method}: estimate takes one of {', '.join(sorted(METHODS))}{hint}")
    features = np.asarray(features, dtype=np.float32)
    classes, codes = encode_labels([str(label) for label in labels])
    if len(classes) < 2:
        raise DataError(f"estimating needs at least 2 classes, got {len(classes)}")
    if len(codes) != len(features):
        raise ValueError(f"{len(features)} embeddings but {len(codes)} labels")
    predicted, usable, protocol = held_out_predictions(features, codes, len(classes), method, loo_limit, folds, seed,
                                                       **options)
    if not usable.any():
        raise DataError("every class has a single picture: nothing can be held out to estimate accuracy; label a "
                        "second picture of some classes")
    correct = predicted[usable] == codes[usable]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (codes[usable], predicted[usable]), 1)
    totals = confusion.sum(axis=1)
    per_class = {str(c): float(confusion[i, i] / totals[i] * 100) for i, c in enumerate(classes) if totals[i]}
    return Estimate(
        encoder=encoder, method=method, protocol=protocol, accuracy=float(correct.mean() * 100),
        ci95=bootstrap_ci(correct, resamples, seed), rows=int(usable.sum()), classes=[str(c) for c in classes],
        confusion=confusion.tolist(), per_class=per_class, random_init=random_init,
        curve=learning_curve(features, codes, len(classes), method, shots, trials, seed, **options),
    )
