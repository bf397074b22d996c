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

import json
import math
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from mmpretrain.embeddings import EmbeddingStore, StoreError, open_store

__all__ = [
    "RetrievalIndex",
    "build_index",
    "build_index_from_store",
    "choose_index_key",
    "estimate_memory",
    "evaluate_index",
    "exact_search",
    "load_index",
    "parse_memory",
    "plot_recall_qps",
    "recall_at_k",
    "recall_qps_curve",
]

Metric = Literal["ip", "l2"]
GpuChoice = bool | Literal["auto"]

FORMAT_VERSION = 1
GPU_MAX_K = 2048  # faiss GPU k-selection limit, also for nprobe
INDEX_FILE, IDS_FILE, PARAMS_FILE = "index.faiss", "ids.npy", "params.json"
FLAT_MAX, HNSW_MAX, IVF_FLAT_MAX = 1_000, 10_000, 1_000_000
PQ_CODE_SIZES = (256, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4)

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")


# ---------------------------------------------------------------------------------------------------- memory / choice


def parse_memory(budget: int | float | str | None) -> int | None:
    """Bytes from ``8_000_000_000``, ``"8GB"``, ``"512MB"`` or ``"2GiB"`` (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value = float(budget)
    else:
        match = _MEMORY_RE.match(str(budget).lower())
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(f"memory_budget {budget!r} is not a size like 8GB, 512MB, 2GiB or a byte count")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"memory_budget must be positive, got {budget!r}")
    return int(value)


def _default_budget() -> int:
    """Half this machine's RAM: the index must fit next to the batch being added and the process itself."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _hnsw_bytes(n: int, m: int) -> int:
    """HNSW{m} graph bytes: 2m int32 links on level 0, ~m/(m-1) upper-level links, per-node bookkeeping."""
    return int(n * (4 * 2 * m + 4 * m / (m - 1) + 24))


def estimate_memory(index_key: str, n: int, dim: int) -> int:
    """Bytes an index of this factory key holds for ``n`` vectors of width ``dim`` (the keys auto-selection makes).

    Covers ``Flat``, ``HNSW{M}``, ``IVF{K}[_HNSW{M}],Flat`` and ``[OPQ{m}_{d}|PCA{d},]IVF{K}[_HNSW{M}],PQ{m}x8``;
    the figures (vectors, codes, 8-byte ids, graph links, centroids) are autofaiss-style estimates.
    """
    parts = index_key.replace(" ", "").split(",")
    total, d = 4096, dim  # headers
    if match := re.fullmatch(r"(?:OPQ(\d+)_|PCAR?)(\d+)", parts[0]):
        d = int(match.group(2))
        total += 4 * dim * (d + 1)
        parts = parts[1:]
    if len(parts) == 1 and parts[0] == "Flat":
        return total + n * (4 * d + 8)
    if len(parts) == 1 and (match := re.fullmatch(r"HNSW(\d+)", parts[0])):
        return total + n * (4 * d + 8) + _hnsw_bytes(n, int(match.group(1)))
    if len(parts) == 2 and (ivf := re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", parts[0])):
        nlist = int(ivf.group(1))
        total += nlist * (4 * d + 16) + (_hnsw_bytes(nlist, int(ivf.group(2))) if ivf.group(2) else 0)
        if parts[1] == "Flat":
            return total + n * (4 * d + 8)
        if pq := re.fullmatch(r"PQ(\d+)(?:x8)?", parts[1]):
            m = int(pq.group(1))
            return total + n * (m + 8) + 4 * 256 * d
    raise ValueError(f"cannot estimate the memory of index_key {index_key!r}; pass one of the auto-selected forms")


def _nlist(n: int) -> int:
    """IVF list count by autofaiss's rule: ~4·sqrt(n) (a power of two, >= 39 points each) under 1M, then fixed."""
    if n < IVF_FLAT_MAX:
        nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
        return max(1, min(nlist, 2 ** int(math.log2(max(n // 39, 1)))))
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 131_072


def _candidates(n: int, dim: int, gpu: bool) -> list[str]:
    """Index keys in order of preference (most accurate first) for n vectors of width dim."""
    if n < FLAT_MAX:
        return ["Flat"]
    if n < HNSW_MAX:
        return ["Flat"] if gpu else ["HNSW32", "Flat"]
    nlist = _nlist(n)
    keys = [] if gpu else ["HNSW32"]
    if n < IVF_FLAT_MAX:
        keys.append(f"IVF{nlist},Flat")
    keys += [f"OPQ{m}_{4 * m},IVF{nlist}_HNSW32,PQ{m}x8" for m in PQ_CODE_SIZES if 4 * m <= dim]
    return keys


def choose_index_key(
    n: int, dim: int, memory_budget_bytes: int | str | None = None, metric: Metric = "ip", gpu: bool = False
) -> str:
    """Pick a faiss factory key for ``n`` vectors of width ``dim`` that fits the memory budget (autofaiss's rules).

    Flat under 1k vectors; HNSW32 under 10k or whenever it fits the budget (skipped on GPUs, which have no HNSW);
    IVF-Flat under 1M if it fits; else ``OPQ{m}_{4m},IVF{K}_HNSW32,PQ{m}x8`` with the largest code that fits
    (4 dimensions per sub-quantizer: fewer make PQ training crawl for little gain).

    Args:
        n: number of vectors.
        dim: vector width.
        memory_budget_bytes: bytes or a size string (``"8GB"``); ``None`` means half this machine's RAM.
        metric: ``"ip"`` or ``"l2"`` (every candidate supports both).
        gpu: whether the index will run on GPUs.

    Raises:
        ValueError: if no candidate fits, naming the smallest candidate and what it needs.
    """
    _check_metric(metric)
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    budget = parse_memory(memory_budget_bytes)
    limit = _default_budget() if budget is None else budget
    sizes = {key: estimate_memory(key, n, dim) for key in _candidates(n, dim, gpu)}
    for key, size in sizes.items():
        if size <= limit:
            return key
    smallest = min(sizes, key=sizes.get)
    raise ValueError(f"no index for {n} x {dim} vectors fits memory_budget={memory_budget_bytes!r} ({limit:,} bytes): "
                     f"the smallest candidate {smallest!r} needs about {sizes[smallest]:,} bytes")


# ---------------------------------------------------------------------------------------------------- data sources


def _check_metric(metric: str) -> int:
    """faiss metric constant for ``"ip"``/``"l2"``, refusing anything else by name."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")
    return _METRICS[metric]


def _as_float32(x: np.ndarray, normalize: bool) -> np.ndarray:
    """A fresh C-contiguous float32 copy (faiss normalizes in place, never the caller's array)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if normalize:
        faiss.normalize_L2(out)
    return out


class _Source:
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
        return _as_float32(data, self.normalize)

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(first row, float32 chunk, store ids or None)`` in row order."""
        if self.store is None:
            for start in range(0, self.n, batch_size):
                yield start, _as_float32(self.array[start:start + batch_size], self.normalize), None
            return
        start = 0
        for chunk, columns in self.store.iter_batches(batch_size, columns=("id",)):
            yield start, _as_float32(chunk, self.normalize), np.asarray(columns["id"], dtype=str)
            start += len(chunk)


def _as_ids(ids: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray:
    """String id array of length n (row numbers when ``ids`` is None), refusing wrong lengths and duplicates."""
    out = np.arange(n).astype(str) if ids is None else np.asarray(ids).astype(str)
    if out.size:  # int -> str casts reserve 21 characters; keep only what the longest id needs
        out = out.astype(f"<U{max(1, int(np.char.str_len(out).max()))}")
    if out.shape != (n,):
        raise ValueError(f"ids must be 1-D with one id per vector ({n}), got shape {out.shape}")
    unique, counts = np.unique(out, return_counts=True)
    if len(unique) != n:
        raise ValueError(f"ids must be unique; duplicated: {unique[counts > 1][:5].tolist()}")
    return out


# ---------------------------------------------------------------------------------------------------- GPU


def _gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _resolve_gpu(use_gpu: GpuChoice) -> bool:
    """``"auto"`` means GPUs when faiss sees any; ``True`` without GPUs is an error rather than a silent CPU run."""
    if use_gpu == "auto":
        return _gpu_count() > 0
    if use_gpu and _gpu_count() == 0:
        raise RuntimeError("use_gpu=True but faiss sees no GPU: install faiss-gpu (pip install mmpretrain[gpu])")
    return bool(use_gpu)


def _inner(index: faiss.Index) -> faiss.Index:
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


def _tunable(index: faiss.Index) -> str | None:
    """The search parameter that trades speed for recall: ``"nprobe"``, ``"efSearch"`` or None (exact)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    return "efSearch" if isinstance(_inner(index), faiss.IndexHNSW) else None


def _params_for(index: faiss.Index, value: int) -> dict[str, int]:
    """Full parameter set for one value of the tunable parameter (an HNSW coarse quantizer follows nprobe)."""
    name = _tunable(index)
    if name == "nprobe" and _hnsw_quantizer(index):
        return {"nprobe": value, "quantizer_efSearch": max(2 * value, 16)}
    return {name: value} if name else {}


def _set_params(index: faiss.Index, params: dict[str, int], gpu: bool) -> None:
    """Apply ``{"nprobe": 16, ...}`` through faiss's (GPU) ParameterSpace, which reaches into wrappers."""
    if params:
        space = faiss.GpuParameterSpace() if gpu else faiss.ParameterSpace()
        space.set_index_parameters(index, ",".join(f"{name}={int(value)}" for name, value in params.items()))


def _search(index: faiss.Index, queries: np.ndarray, k: int, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """faiss distances and labels for prepared queries, ``batch_size`` queries at a time."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dist = np.empty((len(queries), k), dtype=np.float32)
    labels = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch_size):
        dist[start:start + batch_size], labels[start:start + batch_size] = index.search(
            queries[start:start + batch_size], k)
    return dist, labels


def _to_gpus(index: faiss.Index, shard: bool) -> faiss.Index | None:
    """Clone onto all GPUs (replicated, or sharded when ``shard``), or None where faiss has no GPU version (HNSW)."""
    if isinstance(_inner(index), faiss.IndexHNSW) or _hnsw_quantizer(index):
        return None
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as exc:
        warnings.warn(f"faiss cannot run this index on GPUs ({exc}); using the CPU", stacklevel=3)
        return None


def _flat(dim: int, metric: int, gpu: bool) -> faiss.Index:
    """Exact index on GPUs when asked, else on the CPU."""
    index = faiss.IndexFlat(dim, metric)
    return faiss.index_cpu_to_all_gpus(index) if gpu else index


# ---------------------------------------------------------------------------------------------------- exact search


def _exact(
    source: _Source, queries: np.ndarray, k: int, metric: Metric, batch_size: int, gpu: bool,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact top-k rows over the source in batches merged in a heap, skipping ``exclude`` (sorted rows).

    Also returns the seconds spent inside faiss's search, so Flat QPS leaves out reading and copying.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "ip")
    flat = _flat(source.dim, _check_metric(metric), gpu and k <= GPU_MAX_K)
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
    source = _Source(database, normalize)
    dist, rows, _ = _exact(source, _queries(queries, source.dim, normalize), k, metric, batch_size,
                           _resolve_gpu(use_gpu))
    return dist, rows


def _queries(queries: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """Queries as a normalized float32 (q, dim) matrix; a single vector becomes one row."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must be (q, {dim}) to match the index, got shape {np.shape(queries)}")
    return _as_float32(q, normalize)


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true top-k neighbours that appear in its returned top-k.

    Works on string ids or integer labels; missing entries (``""`` or negative labels) in the truth are not counted.
    """
    hits, totals = _hits(found_ids, true_ids, k)
    return float(hits.sum() / totals.sum()) if totals.sum() else 1.0


def _recall_per_query(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------------- the index


class RetrievalIndex:
    """A faiss index plus the string ids of its rows, its metric, tuned search parameters and store link.

    Build with :func:`build_index`, reopen with :func:`load_index`. ``search`` returns ids, never row numbers.
    """

    def __init__(
        self,
        index: faiss.Index,
        ids: np.ndarray,
        metric: Metric,
        index_key: str,
        normalize: bool,
        search_params: dict[str, int] | None = None,
        tuning: dict[str, Any] | None = None,
        store: EmbeddingStore | None = None,
        store_fingerprint: str | None = None,
        store_path: str | None = None,
        gpu_index: faiss.Index | None = None,
    ) -> None:
        """Wrap a trained, filled CPU index (and optionally its GPU clone); ``ids[i]`` is the id of faiss id ``i``."""
        if index.ntotal != len(ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(ids)} ids were given")
        self.index = index
        self.ids = ids
        self.metric = metric
        self.index_key = index_key
        self.normalize = normalize
        self.tuning = tuning or {}
        self.store = store
        self.store_fingerprint = store_fingerprint
        self.store_path = store_path
        self._gpu = gpu_index
        self._metadata: dict[tuple[str, ...] | None, pa.Table] = {}
        self.search_params: dict[str, int] = {}
        self.set_search_params(**(search_params or {}))

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector width the index expects."""
        return int(self.index.d)

    @property
    def on_gpu(self) -> bool:
        """Whether searches (with k <= 2048) run on GPUs."""
        return self._gpu is not None

    def tunable(self) -> str | None:
        """The search parameter that trades speed for recall: ``"nprobe"``, ``"efSearch"`` or None (exact)."""
        return _tunable(self.index)

    def set_search_params(self, **params: int) -> None:
        """Apply faiss search parameters (``nprobe=16``, ``efSearch=64``...) on the CPU index and its GPU clone."""
        _set_params(self.index, params, gpu=False)
        if self._gpu is not None and params.get("nprobe", 0) <= GPU_MAX_K:
            _set_params(self._gpu, params, gpu=True)
        self.search_params = {**self.search_params, **{name: int(value) for name, value in params.items()}}

    def _search_labels(self, queries: np.ndarray, k: int, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Distances and faiss ids (store rows) for prepared queries; on GPUs when k and nprobe allow."""
        gpu_ok = self._gpu is not None and k <= GPU_MAX_K and self.search_params.get("nprobe", 0) <= GPU_MAX_K
        return _search(self._gpu if gpu_ok else self.index, queries, k, batch_size)

    def search(self, queries: np.ndarray, k: int = 10, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids for each query embedding (normalized here when the index is).

        Returns:
            ``(scores (q, k) float32, ids (q, k) str)``: inner products (higher is closer) for ``ip``, squared L2
            distances (lower is closer) for ``l2``; missing hits (fewer than k found) are ``nan`` and ``""``.
        """
        dist, labels = self._search_labels(_queries(queries, self.dim, self.normalize), k, batch_size)
        found = labels >= 0
        ids = np.full(labels.shape, "", dtype=self.ids.dtype)
        ids[found] = self.ids[labels[found]]
        return np.where(found, dist, np.nan).astype(np.float32), ids

    def metadata_for(self, ids: Sequence[str] | np.ndarray, columns: Sequence[str] | None = None) -> list[Any]:
        """Store metadata rows (``{"id", "path", "label", ...}``) of ids, in the same (1-D or 2-D) layout.

        Missing hits (``""``) give None. Needs the store the index was built from (see :func:`load_index`).
        """
        if self.store is None:
            raise RuntimeError("this index has no embedding store attached: build it from a store, or pass "
                               "load_index(path, store=...)")
        array = np.asarray(ids).astype(str)
        if array.ndim not in (1, 2):
            raise ValueError(f"ids must be 1-D or 2-D, got shape {array.shape}")
        flat = array.reshape(-1)
        key = None if columns is None else tuple(columns)
        if key not in self._metadata:
            self._metadata[key] = self.store.metadata(None if key is None else ["id", *(c for c in key if c != "id")])
        present = flat != ""
        rows = np.full(len(flat), -1, dtype=np.int64)
        rows[present] = self.store.row_of(flat[present])
        records = self._metadata[key].take(pa.array(rows[present])).to_pylist()
        out: list[Any] = [None] * len(flat)
        for position, record in zip(np.flatnonzero(present), records):
            out[position] = record
        if array.ndim == 2:
            width = array.shape[1]
            return [out[i:i + width] for i in range(0, len(out), width)]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write index, ids and parameters to directory ``path`` atomically (temporary sibling, then rename).

        An earlier index at ``path`` is replaced; any other existing file or folder is refused, never deleted.
        """
        path = Path(path)
        if path.exists() and not (path / PARAMS_FILE).is_file():
            raise FileExistsError(f"{path} exists and is not a saved index: refusing to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self.ids, allow_pickle=False)
            params = {
                "format_version": FORMAT_VERSION, "metric": self.metric, "index_key": self.index_key,
                "normalize": self.normalize, "ntotal": self.ntotal, "dim": self.dim,
                "search_params": self.search_params, "tuning": self.tuning,
                "store_fingerprint": self.store_fingerprint, "store_path": self.store_path,
                "faiss_version": faiss.__version__,
            }
            (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
            for file in tmp.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
            if path.exists():
                path.rename(old)
            try:
                tmp.rename(path)
            except OSError:
                if old.exists():
                    old.rename(path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    def __repr__(self) -> str:
        return (f"RetrievalIndex({self.index_key!r}, ntotal={self.ntotal}, dim={self.dim}, metric={self.metric!r}, "
                f"search_params={self.search_params}, gpu={self.on_gpu})")


# ---------------------------------------------------------------------------------------------------- tuning


def _sweep_values(index: faiss.Index, k: int, gpu: bool) -> list[int]:
    """Doubling candidates for the tunable parameter: nprobe up to nlist (2048 on GPUs), efSearch from k to 4096."""
    if _tunable(index) == "nprobe":
        top = faiss.extract_index_ivf(index).nlist
        top = min(top, GPU_MAX_K) if gpu else top
        values = [2**i for i in range(int(math.log2(top)) + 1)]
        return values if values[-1] == top else [*values, top]
    return sorted({max(v, k) for v in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)})


def _tune(
    cpu_index: faiss.Index, searcher: faiss.Index, gpu: bool, queries: np.ndarray, truth: np.ndarray, k: int,
    target: float,
) -> dict[str, Any]:
    """Smallest nprobe/efSearch whose recall@k on held-out queries surely reaches ``target``: doubling, bisection.

    "Surely" means the mean minus two standard errors over the queries: the plain mean sits right at the target
    after bisection, so on fresh queries it would fall short about half the time. ``searcher`` is the index
    being built (``cpu_index`` or its GPU clone), holding every row but the queries'.
    """
    name = _tunable(cpu_index)
    measured: dict[int, tuple[float, float]] = {}

    def lower(value: int) -> float:
        if value not in measured:
            _set_params(searcher, _params_for(cpu_index, value), gpu)
            per_query = _recall_per_query(_search(searcher, queries, k)[1], truth, k)
            measured[value] = (float(per_query.mean()), float(per_query.std() / math.sqrt(len(per_query))))
        mean, se = measured[value]
        return mean - 2 * se

    low = None
    for value in _sweep_values(cpu_index, k, gpu):
        if lower(value) >= target:
            high = value
            break
        low = value
    else:
        best = max(lower(v) for v in measured)
        high = min(v for v in measured if lower(v) >= best - 0.005)
        warnings.warn(f"recall@{k} reaches {measured[high][0]:.3f} at most, below the target {target}; "
                      f"using {name}={high}", stacklevel=3)
    if low is not None and lower(high) >= target:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if lower(middle) >= target else (middle, high)
    return {"param": name, "value": high, "recall": measured[high][0], "recall_se": measured[high][1],
            "target_recall": target, "k": k, "queries": len(queries),
            "sweep": {str(v): [round(m, 4), round(m - 2 * e, 4)] for v, (m, e) in sorted(measured.items())}}


# ---------------------------------------------------------------------------------------------------- build / load


def build_index(
    embeddings: np.ndarray | EmbeddingStore,
    ids: Sequence[Any] | np.ndarray | None = None,
    metric: Metric = "ip",
    index_key: str = "auto",
    memory_budget: int | str | None = None,
    *,
    normalize: bool | None = None,
    train_sample: int | None = None,
    batch_size: int = 65_536,
    target_recall: float | None = 0.95,
    k_tune: int = 10,
    tune_queries: int = 1_000,
    ef_construction: int = 80,
    use_gpu: GpuChoice = "auto",
    gpu_shard: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> RetrievalIndex:
    """Build a searchable index over an array or an embedding store, and tune its search parameters.

    Args:
        embeddings: ``(n, dim)`` array, or an :class:`EmbeddingStore` (streamed; ids and fingerprint come from it).
        ids: one id per row for arrays (row numbers as strings when None); must be None for a store.
        metric: ``"ip"`` (inner product; cosine when normalized) or ``"l2"``.
        index_key: ``"auto"`` (:func:`choose_index_key`) or any faiss ``index_factory`` string.
        memory_budget: bytes or ``"8GB"``-style string for the auto choice (None: half this machine's RAM).
        normalize: L2-normalize vectors and queries; default True for ``ip``, False for ``l2``.
        train_sample: rows sampled for training (default: 40 per IVF list, at least 20k, at most n).
        batch_size: rows read, added and exactly searched per batch (bounds memory for stores).
        target_recall: recall@k_tune the tuned nprobe/efSearch must reach (mean minus two standard errors over
            the held-out queries); None skips tuning.
        k_tune: k of that recall.
        tune_queries: rows (at most n/10) held out of the index while tuning, used as queries, then added.
        ef_construction: HNSW build effort (graph and HNSW coarse quantizers); faiss's default 40 leaves clustered
            data poorly linked, so recall stalls below 0.99 at any efSearch.
        use_gpu: ``"auto"`` uses all GPUs when faiss-gpu sees any (HNSW stays on the CPU).
        gpu_shard: shard the index across GPUs instead of replicating it.
        seed: sampling seed.
        progress: show a tqdm bar while adding.
    """
    metric_type = _check_metric(metric)
    normalize = metric == "ip" if normalize is None else normalize
    source = _Source(embeddings, normalize)
    store = source.store
    if store is not None and ids is not None:
        raise ValueError("ids come from the store's id column; do not pass ids with a store")
    if source.n == 0:
        raise ValueError("cannot index zero vectors")
    array_ids = _as_ids(ids, source.n) if store is None else None
    gpu = _resolve_gpu(use_gpu)
    if index_key == "auto":
        index_key = choose_index_key(source.n, source.dim, memory_budget, metric, gpu=gpu)
    try:
        cpu_index = faiss.index_factory(source.dim, index_key, metric_type)
    except RuntimeError as exc:
        raise ValueError(f"faiss cannot build index_key {index_key!r}: {exc}") from exc
    for hnsw in _hnsw_parts(cpu_index):
        hnsw.efConstruction = ef_construction
    if not _takes_ids(cpu_index):
        cpu_index = faiss.IndexIDMap(cpu_index)
    rng = np.random.default_rng(seed)
    if not cpu_index.is_trained:
        _train(cpu_index, source, train_sample, rng, gpu)
    n_tune = min(tune_queries, source.n // 10)
    tune = target_recall is not None and _tunable(cpu_index) is not None and n_tune > 0
    held = np.sort(rng.choice(source.n, size=n_tune, replace=False)) if tune else np.empty(0, dtype=np.int64)
    searcher = (_to_gpus(cpu_index, gpu_shard) if gpu else None) or cpu_index
    on_gpu = searcher is not cpu_index
    id_parts = []
    with tqdm(total=source.n, desc=f"index {index_key}", unit="vec", disable=not progress) as bar:
        for start, chunk, chunk_ids in source.batches(batch_size):
            count = len(chunk)
            rows = np.arange(start, start + count)
            if len(held):
                keep = ~np.isin(rows, held, assume_unique=True)
                chunk, rows = chunk[keep], rows[keep]
            searcher.add_with_ids(chunk, rows)
            id_parts.append(chunk_ids)
            bar.update(count)
    tuning, params = {}, {}
    if tune:
        queries = source.take(held)
        _, truth, _ = _exact(source, queries, k_tune, metric, batch_size, gpu, exclude=held)
        tuning = _tune(cpu_index, searcher, on_gpu, queries, truth, k_tune, target_recall)
        params = _params_for(cpu_index, tuning["value"])
        searcher.add_with_ids(queries, held)
    if on_gpu:
        cpu_index = faiss.index_gpu_to_cpu(searcher)
    return RetrievalIndex(
        cpu_index, _as_ids(np.concatenate(id_parts), source.n) if store is not None else array_ids, metric,
        index_key, normalize, params, tuning, store=store,
        store_fingerprint=store.fingerprint() if store is not None else None,
        store_path=str(store.root.resolve()) if store is not None else None, gpu_index=searcher if on_gpu else None)


def _hnsw_parts(index: faiss.Index) -> list[Any]:
    """The HNSW graphs inside an index: its own, or its IVF coarse quantizer's."""
    ivf = faiss.try_extract_index_ivf(index)
    part = _inner(index) if ivf is None else faiss.downcast_index(ivf.quantizer)
    return [part.hnsw] if isinstance(part, faiss.IndexHNSW) else []


def _takes_ids(index: faiss.Index) -> bool:
    """Whether the index stores explicit faiss ids itself (IVF, possibly under pre-transforms); else wrap in IDMap."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _train(index: faiss.Index, source: _Source, train_sample: int | None, rng: np.random.Generator,
           gpu: bool) -> None:
    """Train on a random sample; IVF k-means runs on GPUs when available (the costly part of training)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        faiss.downcast_index(ivf).do_polysemous_training = False  # only serves polysemous_ht search; slow
    size = train_sample or max(40 * (ivf.nlist if ivf is not None else 0), 20_000)
    rows = np.sort(rng.choice(source.n, size=min(size, source.n), replace=False))
    clustering = None  # kept referenced here: faiss holds only a raw pointer to it
    if ivf is not None and gpu:
        clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type))
        ivf.clustering_index = clustering
    index.train(source.take(rows))
    if clustering is not None:
        ivf.clustering_index = None


def build_index_from_store(store: str | os.PathLike | EmbeddingStore, **kwargs: Any) -> RetrievalIndex:
    """:func:`build_index` over a store given by path (opened with full verification) or as an open store."""
    if not isinstance(store, EmbeddingStore):
        store = open_store(store, verify="full")
    return build_index(store, **kwargs)


def _attach(index: RetrievalIndex, store: EmbeddingStore, where: Path) -> None:
    """Pair a loaded index with a store, refusing one that is not the store the index was built from."""
    if index.store_fingerprint is not None:
        found = store.fingerprint()
        if found != index.store_fingerprint:
            raise StoreError(f"index {where} was built from embedding store {index.store_path} (fingerprint "
                             f"{index.store_fingerprint}) but store {store.root} has fingerprint {found}; "
                             f"rebuild the index or pass the store it was built from")
    elif store.count != index.ntotal or not np.array_equal(store.ids(), index.ids):
        raise StoreError(f"index {where} was built from an array whose ids do not match store {store.root} "
                         f"({store.count} rows vs {index.ntotal} indexed)")
    index.store = store


def load_index(
    path: str | os.PathLike,
    store: str | os.PathLike | EmbeddingStore | None = None,
    use_gpu: GpuChoice = "auto",
    gpu_shard: bool = False,
    verify: str = "counts",
) -> RetrievalIndex:
    """Reopen a saved index; attach ``store`` (or the store it was built from, if still there) after checking it.

    Args:
        path: directory written by :meth:`RetrievalIndex.save`.
        store: store to pair with (path or open store); default: the saved store path when it exists.
        use_gpu: as in :func:`build_index`; HNSW indexes stay on the CPU.
        gpu_shard: shard across GPUs instead of replicating.
        verify: :func:`open_store` check level for a store opened here by path.

    Raises:
        FileNotFoundError: naming a missing file. ValueError: for an unreadable or inconsistent index.
        StoreError: for a store whose fingerprint differs from the one recorded at build time (both named).
    """
    path = Path(path)
    for name in (INDEX_FILE, IDS_FILE, PARAMS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"index directory {path} is missing {name}")
    try:
        params = json.loads((path / PARAMS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot parse {path / PARAMS_FILE}: {exc}") from exc
    if params.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path / PARAMS_FILE} has format version {params['format_version']}, newer than this "
                         f"reader ({FORMAT_VERSION}); upgrade mmpretrain")
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
    except RuntimeError as exc:
        raise ValueError(f"cannot read faiss index {path / INDEX_FILE}: {exc}") from exc
    ids = np.load(path / IDS_FILE, allow_pickle=False)
    if index.ntotal != len(ids) or index.ntotal != params["ntotal"]:
        raise ValueError(f"index directory {path} is inconsistent: {INDEX_FILE} holds {index.ntotal} vectors, "
                         f"{IDS_FILE} {len(ids)} ids, {PARAMS_FILE} says {params['ntotal']}")
    result = RetrievalIndex(
        index, ids, params["metric"], params["index_key"], params["normalize"], params["search_params"],
        params.get("tuning"), store_fingerprint=params.get("store_fingerprint"),
        store_path=params.get("store_path"), gpu_index=_to_gpus(index, gpu_shard) if _resolve_gpu(use_gpu) else None)
    if store is None and result.store_path is not None:
        if Path(result.store_path).is_dir():
            store = result.store_path
        else:
            warnings.warn(f"embedding store {result.store_path} that index {path} was built from is gone; "
                          f"metadata_for needs load_index(path, store=...)", stacklevel=2)
    if store is not None:
        _attach(result, store if isinstance(store, EmbeddingStore) else open_store(store, verify=verify), path)
    return result


# ---------------------------------------------------------------------------------------------------- evaluation


def recall_qps_curve(
    index: RetrievalIndex, queries: np.ndarray, true_rows: np.ndarray, k: int, values: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Recall@k and QPS for each nprobe/efSearch value (the index's parameters are restored afterwards)."""
    name = index.tunable()
    if name is None:
        return []
    prepared = _queries(queries, index.dim, index.normalize)
    saved = dict(index.search_params)
    curve = []
    try:
        for value in values or _sweep_values(index.index, k, index.on_gpu):
            index.set_search_params(**_params_for(index.index, value))
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
    source = _Source(database, index.normalize)
    if (source.n, source.dim) != (index.ntotal, index.dim):
        raise ValueError(f"database is {source.n} x {source.dim} but the index holds {index.ntotal} x {index.dim}")
    prepared = _queries(queries, index.dim, index.normalize)
    _, truth, flat_seconds = _exact(source, prepared, k, index.metric, batch_size, index.on_gpu)
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
