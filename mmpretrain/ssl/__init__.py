"""Self-supervised learning: MoBY and its pure-torch parts (queue, momentum schedule, loss, kNN monitor).

The lr schedule, weight-decay groups and optimizer kernel MoBY trains with are shared with the video modules and
live in :mod:`mmpretrain.training`.
"""

from mmpretrain.ssl.callbacks import ViewPairGrid
from mmpretrain.ssl.evaluation import LinearProbe, extract_features
from mmpretrain.ssl.knn import knn_accuracy, weighted_knn_predict
from mmpretrain.ssl.linear_eval import knn_evaluate, linear_evaluate
from mmpretrain.ssl.losses import infonce_with_queue, moby_loss
from mmpretrain.ssl.moby import MoBY
from mmpretrain.ssl.momentum import cosine_momentum, update_momentum
from mmpretrain.ssl.preflight import QueueCheck, queue_fits
from mmpretrain.ssl.queue import KeyQueue
from mmpretrain.ssl.warm_start import warm_start

__all__ = [
    "KeyQueue",
    "LinearProbe",
    "MoBY",
    "QueueCheck",
    "ViewPairGrid",
    "cosine_momentum",
    "extract_features",
    "infonce_with_queue",
    "knn_accuracy",
    "knn_evaluate",
    "linear_evaluate",
    "moby_loss",
    "queue_fits",
    "update_momentum",
    "warm_start",
    "weighted_knn_predict",
]
