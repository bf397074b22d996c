"""Shared retrieval pieces: metric and GPU choices, row sources over arrays or stores, faiss helpers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import faiss
import numpy as np

from mmpretrain.embeddings import EmbeddingStore, check_id_text
from mmpretrain.errors import ConfigError

Metric = Literal["ip", "l2"]
GpuChoice = bool | Literal["auto"]

GPU_MAX_K = 2048  # faiss GPU k-selection limit, also for nprobe

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


# ---------------------------------------------------------------------------------------------------- data sources


def check_metric(metric: str) -> int:
    """faiss metric constant for ``"ip"``/``"l2"``, refusing anything else by name."""
    if metric not in _METRICS:
        raise ConfigError(f"metric must be 'ip' or 'l2', got {metric!r}")
    return _METRICS[metric]


def as_float32(x: np.ndarray, normalize: bool) -> np.ndarray:
    """A fresh C-contiguous float32 copy (faiss normalizes in place, never the caller's array)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if normalize:
        faiss.normalize_L2(out)
    return out


class VectorSource:
    """Row-ordered float32 access to an array or a store, normalized on the way out, without loading a store."""

    def __init__(self, data: np.ndarray | EmbeddingStore, normalize: bool) -> None:
        self.store = data if isinstance(data, EmbeddingStore) else None
        self.array = None if self.store is not None else np.asarray(data)
        if self.array is not None and (self.array.ndim != 2 or not np.issubdtype(self.array.dtype, np.number)):
            raise ValueError(f"embeddings must be a numeric 2-D array, got {self.array.dtype}{self.array.shape}")
        self.normalize = normalize
        self.n, self.dim = (self.store.count, self.store.dim) if self.store is not None else self.array.shape

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order) as normalized float32."""
        data = self.store.take(rows) if self.store is not None else self.array[rows]
        return as_float32(data, self.normalize)

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(first row, float32 chunk, store ids or None)`` in row order."""
        if self.store is None:
            for start in range(0, self.n, batch_size):
                yield start, as_float32(self.array[start:start + batch_size], self.normalize), None
            return
        start = 0
        for chunk, columns in self.store.iter_batches(batch_size, columns=("id",)):
            yield start, as_float32(chunk, self.normalize), np.asarray(columns["id"], dtype=str)
            start += len(chunk)


def as_ids(ids: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """Id array of length n (row numbers as strings when ``ids`` is None), refusing wrong lengths and duplicates.

    Integer ids stay int64, so ``search`` returns what went in; anything else becomes strings, refused when they
    hold NUL or a line break (which numpy, Arrow or the npy format would not give back exactly).
    """
    if ids is not None and (hasattr(ids, "column_names") or hasattr(ids, "columns")):  # a whole table
        raise ValueError("ids must be one column of ids, e.g. store.metadata()['id'], not a whole table")
    given = None if ids is None else np.asarray(ids)
    if given is not None and given.dtype.kind in "iu" and given.ndim == 1:
        out = given.astype(np.int64)
        if given.dtype.kind == "u" and given.size and given.max() > np.iinfo(np.int64).max:
            raise ValueError("unsigned ids beyond int64 cannot be stored exactly; pass them as strings")
        unique = np.unique(out)
        if out.shape != (n,) or len(unique) != n:
            raise ValueError(f"ids must be 1-D, unique, one per vector ({n}); got shape {out.shape}, "
                             f"{len(unique)} distinct")
        return out
    if given is not None:
        check_id_text(given.ravel(), "ids given to the index")
    out = np.arange(n).astype(str) if given is None else given.astype(str)
    if out.size:  # int -> str casts reserve 21 characters; keep only what the longest id needs
        out = out.astype(f"<U{max(1, int(np.char.str_len(out).max()))}")
    if out.shape != (n,):
        raise ValueError(f"ids must be 1-D with one id per vector ({n}: a list, numpy array or pyarrow/pandas "
                         f"column), got shape {out.shape}")
    unique, counts = np.unique(out, return_counts=True)
    if len(unique) != n:
        raise ValueError(f"ids must be unique; duplicated: {unique[counts > 1][:5].tolist()}")
    return out


# ---------------------------------------------------------------------------------------------------- GPU


def _gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def resolve_gpu(use_gpu: GpuChoice) -> bool:
    """``"auto"`` means GPUs when faiss sees any; ``True`` without GPUs is an error rather than a silent CPU run."""
    if use_gpu == "auto":
        return _gpu_count() > 0
    if use_gpu and _gpu_count() == 0:
        raise ConfigError("use_gpu=True but faiss sees no GPU: install faiss-gpu (pip install mmpretrain[gpu])")
    return bool(use_gpu)


def inner_index(index: faiss.Index) -> faiss.Index:
    """The search structure under pre-transforms, refinement and id maps."""
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        elif isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            index = faiss.downcast_index(index.index)
        else:
            return index


def _hnsw_quantizer(index: faiss.Index) -> bool:
    """Whether an IVF index routes through an HNSW coarse quantizer (then quantizer_efSearch must follow nprobe)."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)


def tunable_param(index: faiss.Index) -> str | None:
    """The search parameter that trades speed for recall: ``"nprobe"``, ``"efSearch"`` or None (exact)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    return "efSearch" if isinstance(inner_index(index), faiss.IndexHNSW) else None


def params_for(index: faiss.Index, value: int) -> dict[str, int]:
    """Full parameter set for one value of the tunable parameter (an HNSW coarse quantizer follows nprobe)."""
    name = tunable_param(index)
    if name == "nprobe" and _hnsw_quantizer(index):
        return {"nprobe": value, "quantizer_efSearch": max(2 * value, 16)}
    return {name: value} if name else {}


def set_params(index: faiss.Index, params: dict[str, int], gpu: bool) -> None:
    """Apply ``{"nprobe": 16, ...}`` through faiss's (GPU) ParameterSpace, which reaches into wrappers."""
    if params:
        space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
        space.set_index_parameters(index, ",".join(f"{name}={int(value)}" for name, value in params.items()))


def search_batched(
    index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 16_384
) -> tuple[np.ndarray, np.ndarray]:
    """faiss distances and labels for prepared queries, ``batch_size`` queries at a time."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dist = np.empty((len(queries), k), dtype=np.float32)
    labels = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        dist[start:start + batch_size], labels[start:start + batch_size] = index.search(
            queries[start:start + batch_size], k)
    return dist, labels


def to_gpus(index: faiss.Index, shard: bool) -> faiss.Index | None:
    """Clone onto all GPUs (replicated, or sharded when ``shard``), or None where faiss has no GPU version (HNSW)."""
    if isinstance(inner_index(index), faiss.IndexHNSW) or _hnsw_quantizer(index):
        return None
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as exc:
        warnings.warn(f"faiss cannot run this index on GPUs ({exc}); using the CPU", stacklevel=3)
        return None


def flat_index(dim: int, metric: int, gpu: bool) -> faiss.Index:
    """Exact index on GPUs when asked, else on the CPU."""
    index = faiss.IndexFlat(dim, metric)
    return faiss.index_cpu_to_all_gpus(index) if gpu else index

