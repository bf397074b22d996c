"""The few-shot classifier behind ``/v1/classify``: a folder loaded with ``mmpretrain.fewshot.load_classifier``.

Its ``predict(images)`` answers one record per image, ``{"labels": [{"label", "p"}, ...], "predicted": label or
"unknown"}`` (the lines of ``mmpretrain-fewshot predict``). :func:`as_prediction` reads that record, as a mapping or
an object with the same attributes, into the JSON the route returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmpretrain.errors import ConfigError


def _field(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, Mapping) else getattr(record, name)


def as_prediction(record: Any, top_k: int) -> dict[str, Any]:
    """One prediction as ``{"predicted": str, "labels": [{"label": str, "p": float}, ...]}`` (best first, ``top_k``).

    >>> as_prediction({"predicted": "cat", "labels": [{"label": "cat", "p": 0.9}, ("dog", 0.1)]}, 1)
    {'predicted': 'cat', 'labels': [{'label': 'cat', 'p': 0.9}]}
    """
    labels = []
    for entry in _field(record, "labels"):
        label, p = (_field(entry, "label"), _field(entry, "p")) if not isinstance(entry, tuple) else entry
        labels.append({"label": str(label), "p": float(p)})
    labels.sort(key=lambda item: -item["p"])
    return {"predicted": str(_field(record, "predicted")), "labels": labels[:top_k]}


class Classifier:
    """A loaded classifier folder; ``classify(images)`` gives :func:`as_prediction` records.

    Raises:
        ConfigError: when this installation has no ``mmpretrain.fewshot.load_classifier`` (naming the key).
    """

    def __init__(self, path: str) -> None:
        try:
            from mmpretrain.fewshot import load_classifier
        except ImportError:
            raise ConfigError(f"classifier={path}: this installation of mmpretrain has no "
                              "mmpretrain.fewshot.load_classifier to read classifier folders") from None
        self.path = path
        self.model = load_classifier(path)

    def classify(self, images: Sequence[Any], top_k: int = 5) -> list[dict[str, Any]]:
        return [as_prediction(record, top_k) for record in self.model.predict(list(images))]

    def describe(self) -> dict[str, Any]:
        classes = getattr(self.model, "classes", None) or getattr(self.model, "class_names", None)
        return {"path": self.path, "classes": list(classes) if classes is not None else None}
