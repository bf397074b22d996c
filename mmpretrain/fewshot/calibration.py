"""Calibrated probabilities and "none of these" from the support set alone, by leave-one-out.

Each support example is scored by the classifier fitted on all the others, as a new picture of a known class would
be. Those held-out scores fit the softmax temperature (minimum negative log-likelihood) and place the unknown
threshold where a chosen share of known-class pictures is still accepted. An example whose class has no other
example cannot be held out this way (its class would vanish), so it takes no part.

Usage::

    from mmpretrain.fewshot.calibration import calibrate
    cal, correct = calibrate(features, codes, n_classes=5, base_mean=features.mean(0), accept_rate=0.95)
    cal.temperature, cal.threshold
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.errors import ConfigError, DataError
from mmpretrain.fewshot.methods import class_means, get_method

__all__ = [
    "Calibration", "calibrate", "calibrate_held_out", "choose_threshold", "fit_temperature", "held_out", "k_fold",
    "leave_one_out", "prototype_similarity", "stratified_folds",
]


def prototype_similarity(
    support: torch.Tensor, codes: torch.Tensor, query: torch.Tensor, n_classes: int, center: torch.Tensor
) -> torch.Tensor:
    """(E, Q, N) cosine similarity of queries to class prototypes in CL2N space (center, L2-normalise, mean,
    normalise again), for episodes ``support`` (E, S, D) / ``codes`` (E, S) / ``query`` (E, Q, D).

    The open-set score: it stays low for a picture far from every class, where softmax probabilities can still
    be peaked. Classes without a support example in an episode get ``-inf``.
    """
    normed = F.normalize(support - center, dim=-1)
    prototypes = F.normalize(class_means(normed, codes, n_classes), dim=-1)
    similarity = F.normalize(query - center, dim=-1) @ prototypes.transpose(1, 2)
    present = F.one_hot(codes, n_classes).sum(dim=1) > 0                      # (E, N)
    return similarity.masked_fill(~present.unsqueeze(1), float("-inf"))


def _scores(method: str, support: torch.Tensor, codes: torch.Tensor, query: torch.Tensor, n_classes: int,
            base_mean: torch.Tensor | None, options: dict[str, Any]) -> torch.Tensor:
    fn = get_method(method)
    kwargs = dict(options)
    if "base_mean" in inspect.signature(fn).parameters:
        kwargs["base_mean"] = base_mean
    return fn(support, codes, query, n_classes, **kwargs)


def _held_out_index(codes: np.ndarray, rows: range, balanced: bool, seed: int) -> np.ndarray:
    """(len(rows), R) support rows of each held-out row's episode: every row but itself and, when ``balanced``, one
    seeded random row of every other class that has two or more (so each class loses one, as its class does).

    Rows whose class has a single row get an arbitrary episode of the same size (they are not usable anyway).
    """
    total = len(codes)
    counts = np.bincount(codes)
    droppable = np.flatnonzero(counts > 1) if balanced else np.empty(0, dtype=np.int64)
    size = total - max(1, len(droppable))
    members = {c: np.flatnonzero(codes == c) for c in droppable}
    index = np.empty((len(rows), size), dtype=np.int64)
    for out, i in enumerate(rows):
        rng = np.random.default_rng((seed, i))  # per row, so chunking does not change the episodes
        drop = {i, *(int(rng.choice(members[k])) for k in droppable if k != codes[i])}
        keep = np.setdiff1d(np.arange(total), np.fromiter(drop, dtype=np.int64), assume_unique=True)
        index[out] = keep[:size] if len(keep) >= size else np.resize(keep, size)
    return index


def stratified_folds(codes: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(S,) fold of each row: every class dealt round-robin over the folds after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(codes), dtype=np.int64)
    offset = 0
    for c in np.unique(codes):
        rows = rng.permutation(np.flatnonzero(codes == c))
        fold[rows] = (np.arange(len(rows)) + offset) % folds
        offset += len(rows)
    return fold


def leave_one_out(
    features: np.ndarray | torch.Tensor,
    codes: np.ndarray | torch.Tensor,
    n_classes: int,
    method: str = "simpleshot",
    base_mean: np.ndarray | torch.Tensor | None = None,
    chunk: int = 64,
    balanced: bool = True,
    seed: int = 0,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out scores of every support example: each row scored by the method fitted without it.

    Balanced (the default): every other class also leaves one (seeded random) row out of the episode, so the
    held-out row's class is not the only one with a shot less. Nearest-centroid scores favour classes with more
    shots (a mean of fewer pictures lies farther from everything), which would make plain leave-one-out
    pessimistic; balanced, it measures the (shots - 1) classifier the learning curve measures.

    Args:
        features: (S, D) support embeddings. codes: (S,) class indices in ``[0, n_classes)``.
        method / options: a few-shot method and its options (see :mod:`mmpretrain.fewshot.methods`).
        base_mean: (D,) CL2N center (the classifier's); ``None`` centers on zero for the similarity.
        chunk: held-out rows scored per batch of episodes (bounds memory at ``chunk · S · D`` floats).
        balanced / seed: leave one row of every class out with the held-out one, chosen with ``seed``.

    Returns:
        ``(scores (S, C), similarity (S,), usable (S,))``: logits, the cosine similarity to the nearest remaining
        prototype, and whether the row's class kept another example (rows without are not scored meaningfully).
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    rows = x.shape[0]
    if rows < 2:
        raise DataError(f"leave-one-out needs at least 2 support examples, got {rows}")
    center = torch.zeros(x.shape[1]) if base_mean is None else torch.as_tensor(np.asarray(base_mean)).float()
    method_mean = None if base_mean is None else center
    counts = torch.bincount(y, minlength=n_classes)
    scores, similarity = [], []
    with torch.no_grad():
        for start in range(0, rows, chunk):
            index = torch.from_numpy(_held_out_index(y.numpy(), range(start, min(rows, start + chunk)), balanced, seed))
            support, labels, query = x[index], y[index], x[start:start + chunk].unsqueeze(1)
            scores.append(_scores(method, support, labels, query, n_classes, method_mean, options)[:, 0])
            similarity.append(prototype_similarity(support, labels, query, n_classes, center)[:, 0].max(dim=-1).values)
    return torch.cat(scores).numpy(), torch.cat(similarity).numpy(), (counts[y] > 1).numpy()


def k_fold(
    features: np.ndarray | torch.Tensor,
    codes: np.ndarray | torch.Tensor,
    n_classes: int,
    method: str = "simpleshot",
    base_mean: np.ndarray | torch.Tensor | None = None,
    folds: int = 10,
    seed: int = 0,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`leave_one_out` returns, each stratified fold scored by the method fitted on the other folds:
    ``folds`` fits instead of one per row, for support sets too large to hold every row out alone."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(codes), dtype=torch.long)
    center = torch.zeros(x.shape[1]) if base_mean is None else torch.as_tensor(np.asarray(base_mean)).float()
    fold = torch.from_numpy(stratified_folds(y.numpy(), folds, seed))
    scores, similarity = torch.zeros(len(y), n_classes), torch.full((len(y),), float("-inf"))
    usable = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for k in fold.unique():
            train, test = fold != k, fold == k
            support, labels, query = x[train][None], y[train][None], x[test][None]
            scores[test] = _scores(method, support, labels, query, n_classes, None if base_mean is None else center,
                                   options)[0]
            similarity[test] = prototype_similarity(support, labels, query, n_classes, center)[0].max(dim=-1).values
            usable[test] = torch.bincount(y[train], minlength=n_classes)[y[test]] > 0
    return scores.numpy(), similarity.numpy(), usable.numpy()


def held_out(features: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor, n_classes: int,
             method: str = "simpleshot", base_mean: np.ndarray | torch.Tensor | None = None, loo_limit: int = 1000,
             folds: int = 10, seed: int = 0, **options: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """:func:`leave_one_out` up to ``loo_limit`` rows, :func:`k_fold` past it; the fourth value names which."""
    if len(codes) <= loo_limit:
        return (*leave_one_out(features, codes, n_classes, method, base_mean, seed=seed, **options), "leave-one-out")
    return (*k_fold(features, codes, n_classes, method, base_mean, folds, seed, **options), f"stratified {folds}-fold")


def fit_temperature(scores: np.ndarray, codes: np.ndarray, low: float = 1e-3, high: float = 1e3) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(scores / T)`` on held-out rows.

    The NLL is convex in ``1/T``, so a golden-section search over ``log T`` finds the minimum; rows separated
    without error push ``T`` to ``low`` (confident), which the bounds keep finite.
    """
    logits = torch.as_tensor(scores, dtype=torch.float64)
    target = torch.as_tensor(codes, dtype=torch.long)
    if logits.shape[0] == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), target))

    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(80):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


def choose_threshold(similarity: np.ndarray, accept_rate: float) -> float | None:
    """The largest similarity threshold that still accepts at least ``accept_rate`` of ``similarity`` (known-class
    held-out rows); ``None`` without rows."""
    if not 0 < accept_rate <= 1:
        raise ConfigError(f"accept_rate={accept_rate} must lie in (0, 1]")
    values = np.sort(np.asarray(similarity, dtype=np.float64))
    if values.size == 0:
        return None
    return float(values[math.floor((1 - accept_rate) * values.size + 1e-9)])


@dataclass
class Calibration:
    """What leave-one-out calibration found, as saved in the classifier's JSON.

    Attributes:
        temperature: divides the logits before softmax.
        threshold: nearest-prototype cosine below which a picture is "unknown" (``None``: never).
        accept_rate: the share of known-class held-out pictures the threshold was placed to accept.
        threshold_source: ``"leave-one-out"``, ``"manual"`` or ``"none"`` (nothing to calibrate on).
        rows: held-out rows used. loo_accuracy: their accuracy (%). loo_accepted: share accepted at the threshold.
        nll_before / nll_after: mean NLL at temperature 1 and at the fitted one.
    """

    temperature: float = 1.0
    threshold: float | None = None
    accept_rate: float = 0.95
    threshold_source: str = "none"
    rows: int = 0
    loo_accuracy: float | None = None
    loo_accepted: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(
    features: np.ndarray | torch.Tensor,
    codes: np.ndarray | torch.Tensor,
    n_classes: int,
    method: str = "simpleshot",
    base_mean: np.ndarray | torch.Tensor | None = None,
    accept_rate: float = 0.95,
    threshold: float | None = None,
    **options: Any,
) -> tuple[Calibration, np.ndarray]:
    """Leave-one-out temperature and unknown threshold for a classifier on this support set (stratified 10-fold
    past 1,000 pictures, see :func:`held_out`).

    Args:
        accept_rate: share of known-class pictures the threshold accepts.
        threshold: a threshold set by hand (kept as it is; the temperature is still fitted).

    Returns:
        See :func:`calibrate_held_out`.
    """
    choose_threshold([], accept_rate)  # checks accept_rate before the work
    scores, similarity, usable, _ = held_out(features, codes, n_classes, method, base_mean, **options)
    return calibrate_held_out(scores, similarity, usable, codes, accept_rate, threshold)


def calibrate_held_out(scores: np.ndarray, similarity: np.ndarray, usable: np.ndarray, codes: np.ndarray | torch.Tensor,
                       accept_rate: float = 0.95, threshold: float | None = None) -> tuple[Calibration, np.ndarray]:
    """Temperature and threshold from held-out ``scores`` (S, C), ``similarity`` (S,) and ``usable`` (S,) rows, as
    :func:`leave_one_out` returns them (or any held-out protocol).

    Returns:
        The calibration, and per usable row whether it was classified right: the estimate that comes with it.
    """
    choose_threshold([], accept_rate)
    y = np.asarray(codes)[usable]
    held = scores[usable]
    result = Calibration(accept_rate=accept_rate, rows=int(usable.sum()))
    correct = held.argmax(axis=1) == y
    if result.rows:
        result.temperature = fit_temperature(held, y)
        result.loo_accuracy = float(correct.mean() * 100)
        logits = torch.as_tensor(held, dtype=torch.float64)
        result.nll_before = float(F.cross_entropy(logits, torch.as_tensor(y)))
        result.nll_after = float(F.cross_entropy(logits / result.temperature, torch.as_tensor(y)))
    if threshold is not None:
        result.threshold, result.threshold_source = float(threshold), "manual"
    elif result.rows:
        result.threshold, result.threshold_source = choose_threshold(similarity[usable], accept_rate), "leave-one-out"
    if result.threshold is not None and result.rows:
        result.loo_accepted = float((similarity[usable] >= result.threshold).mean())
    return result, correct
