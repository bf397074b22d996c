"""Exact (Flat) search as ground truth, query preparation and recall@k."""

from __future__ import annotations

import time

import faiss
import numpy as np

from mmpretrain.embeddings import EmbeddingStore
from mmpretrain.retrieval.core import (
    GPU_MAX_K,
    GpuChoice,
    Metric,
    VectorSource,
    as_float32,
    check_metric,
    flat_index,
    resolve_gpu,
)

# ---------------------------------------------------------------------------------------------------- exact search


def exact_topk(
    source: VectorSource, queries: np.ndarray, k: int, metric: Metric, batch_size: int, gpu: bool,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k rows over the source in batches merged in a heap, skipping ``exclude`` (sorted rows).

    Also returns the seconds spent inside faiss's search, so Flat QPS leaves out reading and copying.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "ip")
    flat = flat_index(source.dim, check_metric(metric), gpu and k <= GPU_MAX_K)
    seconds = 0.0
    for start, chunk, _ in source.batches(batch_size):
        rows = np.arange(start, start + len(chunk))
        if exclude is not None:
            keep = ~np.isin(rows, exclude, assume_unique=True)
            chunk, rows = chunk[keep], rows[keep]
            if not len(rows):
                continue
        flat.reset()
        flat.add(chunk)
        tic = time.perf_counter()
        dist, labels = flat.search(queries, k)
        seconds += time.perf_counter() - tic
        heap.add_result(np.ascontiguousarray(dist), np.where(labels >= 0, rows[labels], -1))
    heap.finalize()
    return heap.D, heap.I, seconds


def exact_search(
    database: np.ndarray | EmbeddingStore,
    queries: np.ndarray,
    k: int,
    metric: Metric = "ip",
    normalize: bool | None = None,
    batch_size: int = 262_144,
    use_gpu: GpuChoice = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force (faiss Flat), streamed over a store's shards when given one.

    Returns:
        ``(scores (q, k) float32, rows (q, k) int64)``: database row numbers, -1 where fewer than k rows exist.
    """
    normalize = metric == "ip" if normalize is None else normalize
    source = VectorSource(database, normalize)
    dist, rows, _ = exact_topk(source, as_queries(queries, source.dim, normalize), k, metric, batch_size,
                           resolve_gpu(use_gpu))
    return dist, rows


def as_queries(queries: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """Queries as a normalized float32 (q, dim) matrix; a single vector becomes one row."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be (q, {dim}) to match the index, got shape {np.shape(queries)}")
    return as_float32(q, normalize)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k neighbours that appear in its returned top-k.

    Works on string ids or integer labels; missing entries (``""`` or negative labels) in the truth are not counted.
    """
    hits, totals = _hits(found_ids, true_ids, k)
    return float(hits.sum() / totals.sum()) if totals.sum() else 1.0


def recall_per_query(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> np.ndarray:
    """Recall@k of each query (1.0 where the truth is empty)."""
    hits, totals = _hits(found_ids, true_ids, k)
    return np.divide(hits, totals, out=np.ones(len(hits)), where=totals > 0)


def _hits(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query: how many true top-k neighbours were found, and how many true neighbours there are."""
    found, truth = np.asarray(found_ids), np.asarray(true_ids)
    if found.ndim != 2 or truth.ndim != 2 or len(found) != len(truth):
        raise ValueError(f"found and true ids must be (q, >=k) with the same q, got {found.shape} and {truth.shape}")
    if min(found.shape[1], truth.shape[1]) < k:
        raise ValueError(f"need at least k={k} columns, got {found.shape[1]} found and {truth.shape[1]} true")
    hits, totals = np.zeros(len(found)), np.zeros(len(found))
    for i, (got, want) in enumerate(zip(found[:, :k].tolist(), truth[:, :k].tolist())):
        want = {w for w in want if w != "" and not (isinstance(w, int) and w < 0)}
        hits[i], totals[i] = len(want.intersection(got)), len(want)
    return hits, totals
