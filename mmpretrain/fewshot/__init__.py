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
"""

from mmpretrain.fewshot.classifier import FewShotClassifier
from mmpretrain.fewshot.evaluate import EpisodeResult, confidence_interval, evaluate_episodes
from mmpretrain.fewshot.finetune import finetune_head, random_resized_crop_flip
from mmpretrain.fewshot.methods import METHODS, TRANSDUCTIVE, FewShotMethod, get_method
from mmpretrain.fewshot.report import flatten_results, log_results_to_wandb, plot_accuracy_vs_shots, results_table
from mmpretrain.fewshot.sampling import Episodes, encode_labels, sample_episodes, split_classes

__all__ = [
    "METHODS",
    "TRANSDUCTIVE",
    "EpisodeResult",
    "Episodes",
    "FewShotClassifier",
    "FewShotMethod",
    "confidence_interval",
    "encode_labels",
    "evaluate_episodes",
    "finetune_head",
    "flatten_results",
    "get_method",
    "log_results_to_wandb",
    "plot_accuracy_vs_shots",
    "random_resized_crop_flip",
    "results_table",
    "sample_episodes",
    "split_classes",
]
