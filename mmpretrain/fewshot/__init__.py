"""Few-shot learning on pretrained embeddings: episodic evaluation with confidence intervals, and classifiers.

Usage::

    from mmpretrain.fewshot import evaluate_episodes
    r = evaluate_episodes(features, labels, n_way=5, n_shot=1, n_query=15, episodes=1000, method="simpleshot")
    print(f"{r.mean:.2f} ± {r.ci95:.2f} %")  # accuracies are in percent, as every accuracy here

Modules: :mod:`~mmpretrain.fewshot.sampling` (episodes, class splits), :mod:`~mmpretrain.fewshot.methods` (the
batched methods and their registry), :mod:`~mmpretrain.fewshot.evaluate`, :mod:`~mmpretrain.fewshot.finetune`
(support-image fine-tuning), :mod:`~mmpretrain.fewshot.classifier` and :mod:`~mmpretrain.fewshot.report`.
:mod:`~mmpretrain.fewshot.inputs` (labeled embeddings from a store, or from an encoder and labeled images) is
imported on its own, so that this package does not pull in the encoders and Lightning.

A classifier to keep (fit on a labelled folder, calibrated, saved with its encoder, called on new pictures)::

    from mmpretrain.fewshot import fit_classifier, load_classifier
    fit_classifier("labelled/", encoder="timm:resnet18", output="my_classifier")
    clf = load_classifier("my_classifier")
    result = clf.predict(["new.jpg"])       # result.predicted, result.probabilities, result.similarity
    clf.predict_embeddings(embeddings)       # the same from raw embeddings of clf.encoder

:mod:`~mmpretrain.fewshot.model` (the kept classifier and its folder), :mod:`~mmpretrain.fewshot.calibration`
(leave-one-out temperature and unknown threshold), :mod:`~mmpretrain.fewshot.holdout` (held-out accuracy with a CI,
learning curve, confusion), :mod:`~mmpretrain.fewshot.selection` (what to label next), :mod:`~mmpretrain.fewshot.export`
(ONNX / TorchScript) and :mod:`~mmpretrain.fewshot.commands` (the command bodies) load the encoders when first
used, through the names below.
"""

from typing import TYPE_CHECKING, Any

from mmpretrain.fewshot.classifier import FewShotClassifier
from mmpretrain.fewshot.evaluate import EpisodeResult, confidence_interval, evaluate_episodes
from mmpretrain.fewshot.finetune import finetune_head, random_resized_crop_flip
from mmpretrain.fewshot.methods import METHODS, TRANSDUCTIVE, FewShotMethod, get_method
from mmpretrain.fewshot.report import flatten_results, log_results_to_wandb, plot_accuracy_vs_shots, results_table
from mmpretrain.fewshot.sampling import Episodes, encode_labels, sample_episodes, split_classes

if TYPE_CHECKING:
    from mmpretrain.fewshot.calibration import Calibration
    from mmpretrain.fewshot.commands import estimate, estimate_table, predict_files, suggest
    from mmpretrain.fewshot.export import export_classifier, export_encoder, run_exported
    from mmpretrain.fewshot.holdout import Estimate, estimate_embeddings
    from mmpretrain.fewshot.model import FewShotModel, Predictions, fit_classifier, load_classifier

_LAZY = {
    "Calibration": "calibration",
    "Estimate": "holdout",
    "FewShotModel": "model",
    "Predictions": "model",
    "estimate": "commands",
    "estimate_embeddings": "holdout",
    "estimate_table": "commands",
    "export_classifier": "export",
    "export_encoder": "export",
    "fit_classifier": "model",
    "load_classifier": "model",
    "predict_files": "commands",
    "run_exported": "export",
    "suggest": "commands",
}


def __getattr__(name: str) -> Any:
    """The application's names, imported on first use (they load the encoders, timm and the hub)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"mmpretrain.fewshot.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmpretrain.fewshot' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "TRANSDUCTIVE",
    "Calibration",
    "EpisodeResult",
    "Episodes",
    "Estimate",
    "FewShotClassifier",
    "FewShotMethod",
    "FewShotModel",
    "Predictions",
    "confidence_interval",
    "encode_labels",
    "estimate",
    "estimate_embeddings",
    "estimate_table",
    "evaluate_episodes",
    "export_classifier",
    "export_encoder",
    "finetune_head",
    "fit_classifier",
    "flatten_results",
    "get_method",
    "load_classifier",
    "log_results_to_wandb",
    "plot_accuracy_vs_shots",
    "predict_files",
    "random_resized_crop_flip",
    "results_table",
    "run_exported",
    "sample_episodes",
    "split_classes",
    "suggest",
]
