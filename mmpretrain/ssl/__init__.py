"""Self-supervised learning: MoBY and its pure-torch parts (queue, schedules, loss, kNN monitor)."""

from mmpretrain.ssl.callbacks import ViewPairGrid
from mmpretrain.ssl.evaluation import LinearProbe, extract_features
from mmpretrain.ssl.knn import knn_accuracy, weighted_knn_predict
from mmpretrain.ssl.losses import infonce_with_queue, moby_loss
from mmpretrain.ssl.moby import MoBY
from mmpretrain.ssl.optim import adamw_kernel, param_groups_weight_decay
from mmpretrain.ssl.queue import KeyQueue
from mmpretrain.ssl.schedules import cosine_momentum, scaled_lr, update_momentum, warmup_cosine_lr

__all__ = [
    "KeyQueue",
    "LinearProbe",
    "MoBY",
    "ViewPairGrid",
    "adamw_kernel",
    "cosine_momentum",
    "extract_features",
    "infonce_with_queue",
    "knn_accuracy",
    "moby_loss",
    "param_groups_weight_decay",
    "scaled_lr",
    "update_momentum",
    "warmup_cosine_lr",
    "weighted_knn_predict",
]
