"""Evaluating video models and stores: retrieval, classification and tagging metrics, fine-tuning task helpers,
text-to-video retrieval of a trained encoder and the linear probe on embedding stores."""

from mmpretrain.video._lazy import lazy_exports

_LAZY = {
    "mean_average_precision": "metrics",
    "per_class_report": "metrics",
    "retrieval_metrics": "metrics",
    "topk_accuracy": "metrics",
    "tune_thresholds": "metrics",
    "classification_metrics": "tasks",
    "tagging_metrics": "tasks",
    "video_text_retrieval": "evaluation",
    "linear_probe": "store_probe",
    "probe_store": "store_probe",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
