"""Item-to-item neighbour tables for vector recall: top-K similar items per item, through a retrieval index.

Every item queries the index built over all items, a batch at a time, so a catalogue of 200k items never needs an
n x n score matrix. The table has one row per (item, neighbour): ``item_id, neighbor_id, score, rank`` (rank 1 is
the closest), like EasyRec's ``vector_retrieve`` output. The item itself is removed by id, not by position: an
approximate index may miss it or rank an identical vector first.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mmpretrain._io import atomic_path
from mmpretrain.embeddings import EmbeddingStore
from mmpretrain.errors import ConfigError
from mmpretrain.retrieval import Metric, RetrievalIndex, build_index

TABLE_FORMATS = ("parquet", "csv")
SCHEMA = pa.schema([("item_id", pa.string()), ("neighbor_id", pa.string()), ("score", pa.float32()),
                    ("rank", pa.int32())])
EXACT_MAX = 10_000


def default_index_key(n: int) -> str:
    """Exact Flat under 10k items; else IVF-Flat with ~4·sqrt(n) lists (a power of two), like TorchEasyRec's
    IVFFlat-IP recall indexes: when every item is also a query, the cheap IVF build beats an HNSW graph."""
    if n < EXACT_MAX:
        return "Flat"
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},Flat"


def _query_batches(
    features: np.ndarray | EmbeddingStore, ids: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(ids, vectors)`` of the items in row order, ``batch_size`` at a time."""
    if isinstance(features, EmbeddingStore):
        for chunk, columns in features.iter_batches(batch_size, columns=("id",)):
            yield np.asarray(columns["id"], dtype=str), chunk
        return
    for start in range(0, len(features), batch_size):
        yield ids[start:start + batch_size], features[start:start + batch_size]


def iter_neighbours(
    index: RetrievalIndex, features: np.ndarray | EmbeddingStore, k: int, threshold: float | None = None,
    batch_size: int = 8192,
) -> Iterator[pa.RecordBatch]:
    """Neighbour rows of every item in ``features`` (the items ``index`` holds), one record batch per query batch.

    Args:
        index: retrieval index over the same items (ids travel with it).
        features: the items' vectors in the index's row order (an array or the store it was built from).
        k: neighbours kept per item, after dropping the item itself.
        threshold: drop neighbours scoring below it (``ip``) or farther than it (``l2``, squared distance).
        batch_size: items searched at a time.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    search_k = min(k + 1, index.ntotal)
    for query_ids, vectors in _query_batches(features, index.ids, batch_size):
        scores, found = index.search(vectors, search_k)
        keep = (found != query_ids[:, None]) & (found != "")
        if threshold is not None:
            keep &= scores >= threshold if index.metric == "ip" else scores <= threshold
        ranks = np.cumsum(keep, axis=1)
        keep &= ranks <= k
        rows, cols = np.nonzero(keep)
        yield pa.record_batch([pa.array(query_ids[rows], type=pa.string()),
                               pa.array(found[rows, cols], type=pa.string()),
                               pa.array(scores[rows, cols], type=pa.float32()),
                               pa.array(ranks[rows, cols], type=pa.int32())], schema=SCHEMA)


def item_to_item(
    features: np.ndarray | EmbeddingStore,
    output: str | os.PathLike,
    ids: Sequence[str] | np.ndarray | None = None,
    k: int = 50,
    threshold: float | None = None,
    *,
    metric: Metric = "ip",
    index_key: str = "auto",
    index: RetrievalIndex | None = None,
    target_recall: float | None = 0.95,
    batch_size: int = 8192,
    table_format: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the top-``k`` neighbour table of every item to ``output`` (Parquet or CSV) and return a summary.

    Args:
        features: ``(n, dim)`` item vectors, or an embedding store (streamed; ids come from it).
        output: table file; its suffix (``.parquet``/``.csv``) picks the format unless ``table_format`` is given.
        ids: one id per row for arrays.
        k: neighbours per item (the item itself never counts).
        threshold: minimum score (``ip``: cosine similarity for the default normalized index) or maximum squared
            distance (``l2``); rows past it are left out, so items may have fewer than ``k`` rows.
        metric: ``"ip"`` (vectors L2-normalized by the index, so scores are cosines) or ``"l2"``.
        index_key: faiss factory key; ``"auto"`` is :func:`default_index_key`.
        index: a ready index over exactly these items (then ``metric``/``index_key`` are its own).
        target_recall: recall@(k+1) the index's nprobe/efSearch is tuned to (None: no tuning).
        batch_size: items searched at a time; memory is O(batch_size * k), never O(n^2).
        table_format: ``"parquet"`` or ``"csv"``.
        seed: sampling seed of index training and tuning.
        progress: tqdm bars while the index is filled and while the table is written.

    Returns:
        ``{"path", "rows", "items", "k", "threshold", "metric", "index_key", "search_params", "build_seconds",
        "search_seconds"}``.
    """
    output = Path(output)
    table_format = table_format or output.suffix.lstrip(".")
    if table_format not in TABLE_FORMATS:
        raise ConfigError(f"neighbour table format must be one of {TABLE_FORMATS} (from the output suffix or "
                          f"table_format), got {table_format!r}")
    tic = time.perf_counter()
    if index is None:
        n = features.count if isinstance(features, EmbeddingStore) else len(features)
        key = default_index_key(n) if index_key == "auto" else index_key
        index = build_index(features, ids=ids, metric=metric, index_key=key, target_recall=target_recall,
                            k_tune=k + 1, seed=seed, progress=progress)
    build_seconds = time.perf_counter() - tic
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    tic = time.perf_counter()
    with atomic_path(output) as tmp:
        writer: Any = (pq.ParquetWriter(tmp, SCHEMA) if table_format == "parquet"
                       else pacsv.CSVWriter(tmp, SCHEMA))
        bar = tqdm(total=index.ntotal, desc="item-to-item", unit="item", disable=not progress)
        with writer, bar:
            for batch in iter_neighbours(index, features, k, threshold, batch_size):
                writer.write_batch(batch)
                rows += batch.num_rows
                bar.update(min(batch_size, index.ntotal - bar.n))
    return {"path": str(output), "rows": rows, "items": index.ntotal, "k": k, "threshold": threshold,
            "metric": index.metric, "index_key": index.index_key, "search_params": dict(index.search_params),
            "build_seconds": build_seconds, "search_seconds": time.perf_counter() - tic}
