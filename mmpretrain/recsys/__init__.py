"""Recommendation features from embeddings: files EasyRec / TorchEasyRec / TorchRec read, and item-to-item tables.

``export_features`` turns an embedding store into features (Parquet ``ARRAY<FLOAT>``, EasyRec CSV with its feature
config, or npy + ids), optionally reduced by a saved PCA and appended to incrementally; ``item_to_item`` writes the
top-K neighbour table of every item through a FAISS index. Nothing here imports a recommender: the files are the
interface. Lower-level pieces (part-file readers and writers, feature-config builders, id checks, the export folder's
manifest) stay in their modules (:mod:`~mmpretrain.recsys.formats`, :mod:`~mmpretrain.recsys.validation`,
:mod:`~mmpretrain.recsys.folder`).
"""

from mmpretrain.recsys.export import export_features
from mmpretrain.recsys.folder import read_features
from mmpretrain.recsys.formats import FORMATS, write_sequence_csv
from mmpretrain.recsys.neighbours import item_to_item
from mmpretrain.recsys.projection import Projection, fit_projection, load_projection, prepare_features
from mmpretrain.recsys.validation import FeatureError

__all__ = [
    "FORMATS",
    "FeatureError",
    "Projection",
    "export_features",
    "fit_projection",
    "item_to_item",
    "load_projection",
    "prepare_features",
    "read_features",
    "write_sequence_csv",
]
