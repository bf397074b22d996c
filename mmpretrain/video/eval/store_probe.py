"""A cheap baseline for video fine-tuning: a linear layer on frozen embeddings from an embedding store.

It answers "how much does fine-tuning add over the pretrained embeddings?" in seconds: the same metrics as
:class:`~mmpretrain.video.train.finetune.VideoFinetune` (top-1/top-5, or mAP, GAP@20, P@5, R@5 and F1 at per-tag
thresholds tuned on the validation scores) from stores written by ``mmpretrain-extract`` with ``label`` / ``tags``
metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmpretrain.embeddings import open_store
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.video.eval.metrics import tune_thresholds
from mmpretrain.video.eval.tasks import check_task, classification_metrics, tagging_metrics

__all__ = ["linear_probe", "probe_store"]


def _features(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{name} must be a non-empty (N, dim) array, got shape {x.shape}")
    return x


def _targets(x: Any, name: str, rows: int, task: str) -> np.ndarray:
    """Class indices ``(N,)`` (classify) or 0/1 tags ``(N, T)`` (tagging), checked against the feature rows."""
    x = np.asarray(x)
    want = 1 if task == "classify" else 2
    if x.ndim != want or len(x) != rows:
        kind = "(N,) class indices" if task == "classify" else "(N, T) 0/1 tags"
        raise ValueError(f"{name} must be {kind} for {rows} feature rows, got shape {x.shape}")
    if task == "classify" and (not np.issubdtype(x.dtype, np.integer) or (x < 0).any()):
        raise ValueError(f"{name} must be non-negative integer class indices")
    return x.astype(np.int64) if task == "classify" else x.astype(np.float32)


def linear_probe(
    features_train: Any,
    labels_train: Any,
    features_val: Any,
    labels_val: Any,
    task: str = "classify",
    num_classes: int | None = None,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a linear layer on standardized frozen features and score the validation split.

    Features are standardized with the training mean and deviation (so one learning rate suits any encoder), then
    AdamW trains full-batch (or in shuffled minibatches of ``batch_size``) with cross-entropy or BCE.

    Args:
        features_train / features_val: ``(N, dim)`` embeddings.
        labels_train / labels_val: class indices ``(N,)`` for ``classify``, 0/1 tags ``(N, T)`` for ``tagging``.
        task: ``classify`` or ``tagging``.
        num_classes: classes (default: the largest index + 1 over both splits).
        epochs / lr / weight_decay / batch_size / seed: the optimisation; ``seed`` fixes init and order.
        device: where to train; default CUDA when present.
        progress: a progress bar over the epochs.

    Returns:
        ``{"top1", "top5"}`` (percent) or ``{"mAP", "gap20", "p@5", "r@5", "f1_micro", "f1_macro", "thresholds"}``
        (fractions; ``thresholds`` a list, one per tag), plus ``num_train`` and ``num_val``.
    """
    check_task(task, "task")
    x_train, x_val = _features(features_train, "features_train"), _features(features_val, "features_val")
    if x_train.shape[1] != x_val.shape[1]:
        raise ValueError(f"features_train has dim {x_train.shape[1]} but features_val has dim {x_val.shape[1]}")
    y_train = _targets(labels_train, "labels_train", len(x_train), task)
    y_val = _targets(labels_val, "labels_val", len(x_val), task)
    if task == "classify":
        outputs = int(num_classes or max(y_train.max(), y_val.max()) + 1)
    else:
        if y_train.shape[1] != y_val.shape[1]:
            raise ValueError(f"labels_train has {y_train.shape[1]} tags but labels_val has {y_val.shape[1]}")
        outputs = y_train.shape[1]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train_t = torch.from_numpy((x_train - mean) / std).to(device)
    x_val_t = torch.from_numpy((x_val - mean) / std).to(device)
    y_train_t = torch.from_numpy(y_train).to(device)

    generator = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x_train.shape[1], outputs)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=generator)
        layer.bias.zero_()
    layer = layer.to(device)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = F.cross_entropy if task == "classify" else F.binary_cross_entropy_with_logits
    step = batch_size or len(x_train)
    for _ in tqdm(range(epochs), desc=f"linear probe ({task})", unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(layer(x_train_t[rows]), y_train_t[rows]).backward()
            optimizer.step()
    with torch.no_grad():
        logits = layer(x_val_t).float()
    scores = (logits.softmax(-1) if task == "classify" else logits.sigmoid()).cpu().numpy()
    counts = {"num_train": len(x_train), "num_val": len(x_val)}
    if task == "classify":
        return {**classification_metrics(scores, y_val), **counts}
    thresholds = tune_thresholds(scores, y_val)
    return {**tagging_metrics(scores, y_val, thresholds), "thresholds": thresholds.tolist(), **counts}


def _store_targets(store: Any, where: str, column: str) -> list[Any]:
    """One metadata column of a store, with an error naming the store when it is missing."""
    table = store.metadata()
    if column not in table.column_names:
        raise DataError(f"{where}: the embedding store has no {column!r} metadata column (columns: "
                        f"{', '.join(table.column_names)}); extract it from a manifest with {column!r}")
    return table.column(column).to_pylist()


def _same_encoder(train: Any, val: Any) -> tuple[bool, tuple[str, str]]:
    """Whether two stores hold one encoder's embeddings: the weights' sha256 that extraction records (so the same
    checkpoint typed as two paths is one encoder), else, for stores without it, the encoder's name."""
    digests = [store.manifest.get("extra", {}).get("weights_sha256") for store in (train, val)]
    if all(digests):
        shown = tuple(f"weights sha256 {d[:12]} ({s.encoder!r})" for d, s in zip(digests, (train, val)))
        return digests[0] == digests[1], shown
    return train.encoder == val.encoder, (repr(train.encoder), repr(val.encoder))


def probe_store(
    train_store: str | os.PathLike,
    val_store: str | os.PathLike,
    task: str = "classify",
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`linear_probe` on two embedding stores, reading ``label`` (classify) or ``tags`` (tagging) metadata.

    Both stores must come from one encoder: the same weights' sha256 where extraction recorded it (the encoder's
    name otherwise). The class (tag) vocabulary is the sorted union over both stores, as the video datamodule
    builds it. Rows without a label are left out of classification; rows without tags count as having none.

    Args:
        train_store / val_store: store folders written by the same encoder.
        task: ``classify`` or ``tagging``.
        **kwargs: :func:`linear_probe`'s optimisation settings (``epochs``, ``lr``, ``weight_decay``, ...).

    Returns:
        :func:`linear_probe`'s metrics plus ``encoder`` and ``classes`` (or ``tags``), the names in output order.
    """
    check_task(task, "task")
    stores = {"train_store": open_store(train_store), "val_store": open_store(val_store)}
    wheres = {key: f"{key}={os.fspath(path)}" for key, path in (("train_store", train_store), ("val_store", val_store))}
    train, val = stores["train_store"], stores["val_store"]
    same, shown = _same_encoder(train, val)
    if not same:
        raise ConfigError(f"{wheres['train_store']} holds embeddings of {shown[0]} but {wheres['val_store']} of "
                          f"{shown[1]}; probe stores of one encoder")
    column = "label" if task == "classify" else "tags"
    values = {key: _store_targets(store, wheres[key], column) for key, store in stores.items()}
    if task == "classify":
        names = sorted({str(v) for part in values.values() for v in part if v is not None})
        index = {name: i for i, name in enumerate(names)}
        rows, targets = {}, {}
        for key, part in values.items():
            rows[key] = np.array([i for i, v in enumerate(part) if v is not None], dtype=np.int64)
            targets[key] = np.array([index[str(part[i])] for i in rows[key]], dtype=np.int64)
            if not len(rows[key]):
                raise DataError(f"{wheres[key]}: no row has a 'label'")
    else:
        names = sorted({str(t) for part in values.values() for tags in part for t in tags or ()})
        if not names:
            raise DataError(f"{wheres['train_store']} and {wheres['val_store']}: no row has 'tags'")
        index = {name: i for i, name in enumerate(names)}
        rows, targets = {}, {}
        for key, part in values.items():
            rows[key] = np.arange(len(part))
            targets[key] = _multi_hot(part, index)
    features = {key: store.take(rows[key]) for key, store in stores.items()}
    result = linear_probe(features["train_store"], targets["train_store"], features["val_store"],
                          targets["val_store"], task=task, num_classes=len(names), **kwargs)
    return {**result, "encoder": train.encoder, "classes" if task == "classify" else "tags": names}


def _multi_hot(tag_lists: Sequence[Sequence[str] | None], index: dict[str, int]) -> np.ndarray:
    out = np.zeros((len(tag_lists), len(index)), dtype=np.float32)
    for row, tags in enumerate(tag_lists):
        for tag in tags or ():
            out[row, index[str(tag)]] = 1.0
    return out
