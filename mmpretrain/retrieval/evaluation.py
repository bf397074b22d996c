"""Index evaluation: recall@k and QPS against exact search, recall-QPS curves and their plot."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmpretrain.embeddings import EmbeddingStore
from mmpretrain.retrieval.core import VectorSource, params_for
from mmpretrain.retrieval.exact import as_queries, exact_topk, recall_at_k
from mmpretrain.retrieval.index import RetrievalIndex, sweep_values

# ---------------------------------------------------------------------------------------------------- evaluation


def recall_qps_curve(
    index: RetrievalIndex, queries: np.ndarray, true_rows: np.ndarray, k: int, values: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Recall@k and QPS for each nprobe/efSearch value (the index's parameters are restored afterwards)."""
    name = index.tunable()
    if name is None:
        return []
    prepared = as_queries(queries, index.dim, index.normalize)
    saved = dict(index.search_params)
    curve = []
    try:
        for value in values or sweep_values(index.index, k, index.on_gpu):
            index.set_search_params(**params_for(index.index, value))
            tic = time.perf_counter()
            _, labels = index._search_labels(prepared, k)
            qps = len(prepared) / (time.perf_counter() - tic)
            curve.append({"param": name, "value": int(value), "recall": recall_at_k(labels, true_rows, k),
                          "qps": qps})
    finally:
        index.set_search_params(**saved)
    return curve


def evaluate_index(
    index: RetrievalIndex,
    queries: np.ndarray,
    k: int = 10,
    database: np.ndarray | EmbeddingStore | None = None,
    sweep: bool = False,
    batch_size: int = 262_144,
) -> dict[str, Any]:
    """Recall@k against exact Flat search and QPS of both, on the same queries and machine.

    Args:
        index: the index to measure.
        queries: ``(q, dim)`` query embeddings (normalized here like the index's).
        k: cut-off.
        database: the vectors the index was built from, in build order; default: the attached store.
        sweep: also measure every nprobe/efSearch value (``result["curve"]``, for :func:`plot_recall_qps`).
        batch_size: database rows per exact-search batch.

    Returns:
        ``{"k", "recall@k", "qps", "flat_qps", "speedup", "queries", "index_key", "search_params"[, "curve"]}``.
    """
    database = index.store if database is None else database
    if database is None:
        raise ValueError("evaluate_index needs the indexed vectors: pass database= or attach the store")
    source = VectorSource(database, index.normalize)
    if (source.n, source.dim) != (index.ntotal, index.dim):
        raise ValueError(f"database is {source.n} x {source.dim} but the index holds {index.ntotal} x {index.dim}")
    prepared = as_queries(queries, index.dim, index.normalize)
    _, truth, flat_seconds = exact_topk(source, prepared, k, index.metric, batch_size, index.on_gpu)
    index._search_labels(prepared[:16], k)  # warm-up: first-touch page faults and GPU lazy init
    tic = time.perf_counter()
    _, labels = index._search_labels(prepared, k)
    seconds = time.perf_counter() - tic
    qps, flat_qps = len(prepared) / seconds, len(prepared) / flat_seconds
    result: dict[str, Any] = {
        "k": k, f"recall@{k}": recall_at_k(labels, truth, k), "qps": qps, "flat_qps": flat_qps,
        "speedup": qps / flat_qps, "queries": len(prepared), "index_key": index.index_key,
        "search_params": dict(index.search_params),
    }
    if sweep:
        result["curve"] = recall_qps_curve(index, prepared, truth, k)
    return result


def plot_recall_qps(
    curve: Sequence[dict[str, Any]], path: str | os.PathLike, flat_qps: float | None = None, title: str | None = None
) -> Path:
    """Save a PNG of QPS (log scale) against recall@k across nprobe/efSearch values, with Flat's QPS as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curve:
        raise ValueError("empty curve: exact (Flat) indexes have no recall-QPS trade-off to plot")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    recalls = [point["recall"] for point in curve]
    ax.plot(recalls, [point["qps"] for point in curve], marker="o")
    for point in curve:
        ax.annotate(f"{point['param']}={point['value']}", (point["recall"], point["qps"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    if flat_qps is not None:
        ax.axhline(flat_qps, color="grey", linestyle="--", label=f"exact Flat ({flat_qps:,.0f} QPS)")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("recall@k")
    ax.set_ylabel("queries per second")
    ax.set_title(title or "recall vs QPS")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
