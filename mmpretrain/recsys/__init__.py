"""Recommendation features from embeddings: files EasyRec / TorchEasyRec / TorchRec read, and item-to-item tables.

``export_features`` turns an embedding store into features (Parquet ``ARRAY<FLOAT>``, EasyRec CSV with its feature
config, or npy + ids), optionally reduced by a saved PCA and appended to incrementally; ``item_to_item`` writes the
top-K neighbour table of every item through a FAISS index. Nothing here imports a recommender: the files are the
interface.
"""

from mmpretrain.recsys.export import export_features, read_features
from mmpretrain.recsys.formats import (
    FORMATS,
    easyrec_config,
    read_part,
    sequence_strings,
    torcheasyrec_config,
    vector_strings,
    write_part,
    write_sequence_csv,
)
from mmpretrain.recsys.neighbours import default_index_key, item_to_item, iter_neighbours
from mmpretrain.recsys.projection import Projection, fit_projection, load_projection, prepare_features
from mmpretrain.recsys.validation import FeatureError, as_matrix, check_ids

__all__ = [
    "FORMATS",
    "FeatureError",
    "Projection",
    "as_matrix",
    "check_ids",
    "default_index_key",
    "easyrec_config",
    "export_features",
    "fit_projection",
    "item_to_item",
    "iter_neighbours",
    "load_projection",
    "prepare_features",
    "read_features",
    "read_part",
    "sequence_strings",
    "torcheasyrec_config",
    "vector_strings",
    "write_part",
    "write_sequence_csv",
]
