"""Self-supervised learning: MoBY and its pure-torch parts (queue, momentum schedule, loss, kNN monitor).

The lr schedule, weight-decay groups and optimizer kernel MoBY trains with are shared with the video modules and
live in :mod:`mmpretrain.training`.
"""

from mmpretrain.ssl.callbacks import ViewPairGrid
from mmpretrain.ssl.evaluation import LinearProbe, extract_features
from mmpretrain.ssl.knn import knn_accuracy, weighted_knn_predict
from mmpretrain.ssl.losses import infonce_with_queue, moby_loss
from mmpretrain.ssl.moby import MoBY
from mmpretrain.ssl.momentum import cosine_momentum, update_momentum
from mmpretrain.ssl.queue import KeyQueue

__all__ = [
    "KeyQueue",
    "LinearProbe",
    "MoBY",
    "ViewPairGrid",
    "cosine_momentum",
    "extract_features",
    "infonce_with_queue",
    "knn_accuracy",
    "moby_loss",
    "update_momentum",
    "weighted_knn_predict",
]
