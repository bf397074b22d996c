"""FAISS retrieval over embeddings: choose, build, tune, search, save/load and evaluate nearest-neighbour indexes.

An index is built from an in-memory array or from an embedding store (trained on a random sample, then filled in
batches from the memory-mapped shards, so a store larger than memory never loads at once). String ids travel
with the index: every vector is added with an explicit int64 faiss id, its row in the id array saved beside the
index (so add order never matters), and an index built from a store records the store's fingerprint so it refuses
to be paired with any other store. ``index_key="auto"`` follows
autofaiss's rules (Flat, HNSW32, IVF-Flat, OPQ+IVF-HNSW+PQ) under a memory budget, and the search parameter
(``nprobe`` or ``efSearch``) is tuned to the smallest value that reaches a target recall@k against exact search.
"""

from __future__ import annotations

from mmpretrain.retrieval.choice import choose_index_key, estimate_memory, parse_memory
from mmpretrain.retrieval.core import Metric as Metric
from mmpretrain.retrieval.evaluation import evaluate_index, plot_recall_qps, recall_qps_curve
from mmpretrain.retrieval.exact import exact_search, recall_at_k
from mmpretrain.retrieval.index import IDS_FILE as IDS_FILE
from mmpretrain.retrieval.index import INDEX_FILE as INDEX_FILE
from mmpretrain.retrieval.index import PARAMS_FILE as PARAMS_FILE
from mmpretrain.retrieval.index import (
    RetrievalIndex,
    build_index,
    build_index_from_store,
    load_index,
)
from mmpretrain.retrieval.queries import Queries, load_query_embeddings, resolve_queries

__all__ = [
    "Queries",
    "RetrievalIndex",
    "build_index",
    "build_index_from_store",
    "choose_index_key",
    "estimate_memory",
    "evaluate_index",
    "exact_search",
    "load_index",
    "load_query_embeddings",
    "parse_memory",
    "plot_recall_qps",
    "recall_at_k",
    "recall_qps_curve",
    "resolve_queries",
]
