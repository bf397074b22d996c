"""A few-shot classifier for applications: fit on a handful of labelled embeddings, predict, reject, save, load."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmpretrain.errors import DataError
from mmpretrain.fewshot.methods import METHODS, TRANSDUCTIVE, class_means, get_method
from mmpretrain.fewshot.sampling import encode_labels

__all__ = ["FewShotClassifier"]

_FORMAT = "mmpretrain.fewshot.FewShotClassifier/1"


class FewShotClassifier:
    """Classify embeddings into classes known from a few labelled examples each.

    The classifier keeps the support embeddings and runs one of the episodic methods of
    :mod:`mmpretrain.fewshot.methods` with the whole support set as one episode, so it predicts exactly what the
    evaluation measured. With a transductive method the queries passed to one :meth:`predict` call are scored
    together and influence each other.

    Rejection: when ``reject_threshold`` is set, a query whose cosine similarity to every class prototype is below
    it gets the ``unknown`` label. Similarities are taken after subtracting ``base_mean`` (when given) and
    L2-normalising, i.e. in SimpleShot's CL2N space, whatever the method; :meth:`max_similarity` returns them so a
    threshold can be chosen on held-out data.

    Args:
        method: a name in :data:`~mmpretrain.fewshot.methods.METHODS`.
        reject_threshold: cosine similarity below which a query is rejected; ``None`` never rejects.
        unknown: the label given to rejected queries.
        **method_kwargs: options of the method, stored with the classifier.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> centers = rng.normal(size=(3, 16))
        >>> support = np.repeat(centers, 5, axis=0) + 0.1 * rng.normal(size=(15, 16))  # 5 shots of 3 classes
        >>> clf = FewShotClassifier("simpleshot", reject_threshold=0.5)
        >>> clf = clf.fit(support, ["cat"] * 5 + ["dog"] * 5 + ["owl"] * 5)
        >>> clf.predict(centers + 0.1 * rng.normal(size=(3, 16))).tolist()
        ['cat', 'dog', 'owl']
        >>> clf.predict(-centers[:1]).tolist()  # like no class
        ['unknown']
    """

    def __init__(
        self, method: str = "simpleshot", reject_threshold: float | None = None, unknown: Any = "unknown",
        **method_kwargs: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown few-shot method {method!r}; known: {', '.join(sorted(METHODS))}")
        self.method = method
        self.reject_threshold = reject_threshold
        self.unknown = unknown
        self.method_kwargs = method_kwargs
        self.classes_: np.ndarray | None = None
        self._support: torch.Tensor | None = None
        self._codes: torch.Tensor | None = None
        self._base_mean: torch.Tensor | None = None

    @property
    def transductive(self) -> bool:
        """Whether queries of one predict call influence each other's predictions."""
        return self.method in TRANSDUCTIVE

    @property
    def support_features(self) -> torch.Tensor:
        """(S, D) float32 support embeddings as fitted."""
        self._check_fitted()
        return self._support

    @property
    def support_codes(self) -> torch.Tensor:
        """(S,) class index of each support row, into :attr:`classes_`."""
        self._check_fitted()
        return self._codes

    @property
    def base_mean(self) -> torch.Tensor | None:
        """(D,) CL2N center given to :meth:`fit`, or None."""
        return self._base_mean

    def fit(
        self,
        support_features: np.ndarray | torch.Tensor,
        support_labels: Sequence | np.ndarray,
        base_mean: np.ndarray | torch.Tensor | None = None,
    ) -> FewShotClassifier:
        """Store the support set.

        Args:
            support_features: (S, D) embeddings of the labelled examples.
            support_labels: S labels of any hashable type (strings, ints, ...); classes may be unbalanced.
            base_mean: (D,) mean of base-class embeddings for SimpleShot's CL2N centering and for rejection; without
                it ``simpleshot`` centers on the support mean.

        Returns:
            ``self``.
        """
        features = _as_matrix(support_features)
        self.classes_, codes = encode_labels(support_labels)
        if len(codes) != features.shape[0]:
            raise ValueError(f"support_features has {features.shape[0]} rows but support_labels has {len(codes)}")
        if len(self.classes_) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {len(self.classes_)}")
        if base_mean is not None:
            base = torch.as_tensor(np.asarray(base_mean), dtype=torch.float32).reshape(-1)
            if base.shape[0] != features.shape[1]:
                raise ValueError(f"base_mean has dimension {base.shape[0]} but the features have {features.shape[1]}")
            self._base_mean = base
        else:
            self._base_mean = None
        self._support, self._codes = features, torch.from_numpy(codes)
        return self

    def predict_proba(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(Q, C) class probabilities, columns in the order of :attr:`classes_` (rejection does not apply)."""
        return torch.softmax(self._scores(_as_matrix(features)), dim=-1).numpy()

    def scores(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(Q, C) logits of the method, columns in the order of :attr:`classes_`: what a temperature divides."""
        return self._scores(_as_matrix(features)).numpy()

    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(Q,) predicted labels; rejected queries get :attr:`unknown`."""
        query = _as_matrix(features)
        labels = self.classes_[self._scores(query).argmax(dim=-1).numpy()]
        if self.reject_threshold is None:
            return labels
        rejected = self.max_similarity(query) < self.reject_threshold
        unknown = np.asarray(self.unknown)
        dtype = np.result_type(labels, unknown) if labels.dtype.kind == unknown.dtype.kind else object
        out = labels.astype(dtype)
        out[rejected] = self.unknown
        return out

    def max_similarity(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """(Q,) cosine similarity of each query to its nearest class prototype: what rejection thresholds."""
        self._check_fitted()
        center = self._base_mean if self._base_mean is not None else torch.zeros(self._support.shape[1])
        support = F.normalize(self._support - center, dim=-1)
        prototypes = F.normalize(class_means(support[None], self._codes[None], len(self.classes_))[0], dim=-1)
        query = F.normalize(_as_matrix(features) - center, dim=-1)
        return (query @ prototypes.T).max(dim=-1).values.numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the classifier to an ``.npz`` file (arrays plus a JSON header, no pickle), atomically.

        Labels and options must be JSON values (str, int, float, bool, None); NumPy scalars are converted.
        """
        self._check_fitted()
        path = Path(path)
        config = {
            "format": _FORMAT,
            "method": self.method,
            "method_kwargs": self.method_kwargs,
            "reject_threshold": self.reject_threshold,
            "unknown": _json_value(self.unknown, "unknown"),
            "classes": [_json_value(label, "class label") for label in self.classes_],
        }
        arrays = {"config": np.array(json.dumps(config)), "support": self._support.numpy(),
                  "codes": self._codes.numpy()}
        if self._base_mean is not None:
            arrays["base_mean"] = self._base_mean.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FewShotClassifier:
        """Read a classifier written by :meth:`save` (``allow_pickle=False``: a file cannot run code)."""
        with np.load(path, allow_pickle=False) as data:
            config = json.loads(str(data["config"]))
            if config.get("format") != _FORMAT:
                raise DataError(f"{path} is not a saved FewShotClassifier (format {config.get('format')!r})")
            classifier = cls(config["method"], config["reject_threshold"], config["unknown"],
                             **config["method_kwargs"])
            labels = np.array(config["classes"])[data["codes"]]
            return classifier.fit(data["support"], labels, base_mean=data.get("base_mean"))

    def _scores(self, query: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        if query.shape[1] != self._support.shape[1]:
            raise ValueError(f"features have dimension {query.shape[1]} but the classifier was fitted on "
                             f"{self._support.shape[1]}")
        fn = get_method(self.method)
        kwargs = dict(self.method_kwargs)
        if "base_mean" in inspect.signature(fn).parameters:
            kwargs["base_mean"] = self._base_mean
        with torch.no_grad():
            return fn(self._support[None], self._codes[None], query[None], len(self.classes_), **kwargs)[0]

    def _check_fitted(self) -> None:
        if self._support is None:
            raise RuntimeError("FewShotClassifier is not fitted: call fit(support_features, support_labels) first")


def _as_matrix(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if tensor.ndim != 2:
        raise ValueError(f"features must be a (rows, dim) matrix, got shape {tuple(tensor.shape)}")
    return tensor.float()


def _json_value(value: Any, what: str) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if value is not None and not isinstance(value, str | int | float | bool):
        raise TypeError(f"cannot save {what} {value!r} of type {type(value).__name__}: use str or int labels")
    return value
