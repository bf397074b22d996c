"""The few-shot classifier behind ``/v1/classify``: a folder written by ``mmpretrain-fewshot fit`` and loaded with
:func:`mmpretrain.fewshot.load_classifier`, which embeds the pictures with its own encoder and answers calibrated
probabilities and "unknown" below its threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Classifier:
    """A loaded classifier folder; ``classify(images)`` gives one ``{"predicted", "labels": [{"label", "p"}]}`` per
    picture, the labels most probable first (as ``mmpretrain-fewshot predict`` writes them)."""

    def __init__(self, path: str) -> None:
        from mmpretrain.fewshot import load_classifier

        self.path = path
        self.model = load_classifier(path)

    def classify(self, images: Sequence[Any], top_k: int = 5) -> list[dict[str, Any]]:
        predictions = self.model.predict(list(images))
        return [{"predicted": predicted, "labels": [{"label": label, "p": p} for label, p in top]}
                for predicted, top in zip(predictions.predicted, predictions.top(top_k))]

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "classes": list(self.model.classes)}
