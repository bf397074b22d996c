"""The retrieval index: wrap, tune, build (from arrays or stores), save and load."""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from mmpretrain._io import read_saved_folder, sha256_file
from mmpretrain.embeddings import EmbeddingStore, StoreError, open_store
from mmpretrain.errors import ConfigError, DataError, PathExistsError
from mmpretrain.retrieval.choice import choose_index_key
from mmpretrain.retrieval.core import (
    GPU_MAX_K,
    GpuChoice,
    Metric,
    VectorSource,
    as_ids,
    check_metric,
    inner_index,
    params_for,
    resolve_gpu,
    search_batched,
    set_params,
    to_gpus,
    tunable_param,
)
from mmpretrain.retrieval.exact import as_queries, exact_topk, recall_per_query

FORMAT_VERSION = 1
INDEX_FILE, IDS_FILE, PARAMS_FILE = "index.faiss", "ids.npy", "params.json"


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
        return tunable_param(self.index)

    def set_search_params(self, **params: int) -> None:
        """Apply faiss search parameters (``nprobe=16``, ``efSearch=64``...) on the CPU index and its GPU clone."""
        set_params(self.index, params, gpu=False)
        if self._gpu is not None and params.get("nprobe", 0) <= GPU_MAX_K:
            set_params(self._gpu, params, gpu=True)
        self.search_params = {**self.search_params, **{name: int(value) for name, value in params.items()}}

    def _search_labels(self, queries: np.ndarray, k: int, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Distances and faiss ids (store rows) for prepared queries; on GPUs when k and nprobe allow."""
        gpu_ok = self._gpu is not None and k <= GPU_MAX_K and self.search_params.get("nprobe", 0) <= GPU_MAX_K
        return search_batched(self._gpu if gpu_ok else self.index, queries, k, batch_size)

    def search(self, queries: np.ndarray, k: int = 10, batch_size: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids for each query embedding (normalized here when the index is).

        Returns:
            ``(scores (q, k) float32, ids (q, k))``: inner products (higher is closer) for ``ip``, squared L2
            distances (lower is closer) for ``l2``; ids keep their type (int64 ids stay int64, others are str);
            missing hits (fewer than k found) are ``nan`` with id ``""`` (``-1`` for int ids).
        """
        dist, labels = self._search_labels(as_queries(queries, self.dim, self.normalize), k, batch_size)
        found = labels >= 0
        ids = np.full(labels.shape, -1 if self.ids.dtype.kind == "i" else "", dtype=self.ids.dtype)
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
            raise PathExistsError(f"{path} exists and is not a saved index: refusing to replace it")
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
            params["sha256"] = {name: sha256_file(tmp / name) for name in (INDEX_FILE, IDS_FILE)}
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


def sweep_values(index: faiss.Index, k: int, gpu: bool) -> list[int]:
    """Doubling candidates for the tunable parameter: nprobe up to nlist (2048 on GPUs), efSearch from k to 4096."""
    if tunable_param(index) == "nprobe":
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
    name = tunable_param(cpu_index)
    measured: dict[int, tuple[float, float]] = {}

    def lower(value: int) -> float:
        if value not in measured:
            set_params(searcher, params_for(cpu_index, value), gpu)
            per_query = recall_per_query(search_batched(searcher, queries, k)[1], truth, k)
            measured[value] = (float(per_query.mean()), float(per_query.std() / math.sqrt(len(per_query))))
        mean, se = measured[value]
        return mean - 2 * se

    low = None
    for value in sweep_values(cpu_index, k, gpu):
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

    Example:
        >>> import numpy as np
        >>> vectors = np.random.default_rng(0).normal(size=(500, 32)).astype("float32")
        >>> index = build_index(vectors, ids=[f"item{i}" for i in range(500)], progress=False)
        >>> scores, ids = index.search(vectors[:2], k=3)
        >>> ids[:, 0].tolist(), scores.shape
        (['item0', 'item1'], (2, 3))
    """
    metric_type = check_metric(metric)
    normalize = metric == "ip" if normalize is None else normalize
    source = VectorSource(embeddings, normalize)
    store = source.store
    if store is not None and ids is not None:
        raise ValueError("ids come from the store's id column; do not pass ids with a store")
    if source.n == 0:
        raise DataError("cannot index zero vectors")
    array_ids = as_ids(ids, source.n) if store is None else None
    gpu = resolve_gpu(use_gpu)
    if index_key == "auto":
        index_key = choose_index_key(source.n, source.dim, memory_budget, metric, gpu=gpu)
    try:
        cpu_index = faiss.index_factory(source.dim, index_key, metric_type)
    except RuntimeError as exc:
        raise ConfigError(f"faiss cannot build index_key {index_key!r}: {exc}") from exc
    for hnsw in _hnsw_parts(cpu_index):
        hnsw.efConstruction = ef_construction
    if not _takes_ids(cpu_index):
        cpu_index = faiss.IndexIDMap(cpu_index)
    rng = np.random.default_rng(seed)
    if not cpu_index.is_trained:
        _train(cpu_index, source, train_sample, rng, gpu)
    n_tune = min(tune_queries, source.n // 10)
    tune = target_recall is not None and tunable_param(cpu_index) is not None and n_tune > 0
    held = np.sort(rng.choice(source.n, size=n_tune, replace=False)) if tune else np.empty(0, dtype=np.int64)
    searcher = (to_gpus(cpu_index, gpu_shard) if gpu else None) or cpu_index
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
        _, truth, _ = exact_topk(source, queries, k_tune, metric, batch_size, gpu, exclude=held)
        tuning = _tune(cpu_index, searcher, on_gpu, queries, truth, k_tune, target_recall)
        params = params_for(cpu_index, tuning["value"])
        searcher.add_with_ids(queries, held)
    if on_gpu:
        cpu_index = faiss.index_gpu_to_cpu(searcher)
    return RetrievalIndex(
        cpu_index, as_ids(np.concatenate(id_parts), source.n) if store is not None else array_ids, metric,
        index_key, normalize, params, tuning, store=store,
        store_fingerprint=store.fingerprint() if store is not None else None,
        store_path=str(store.root.resolve()) if store is not None else None, gpu_index=searcher if on_gpu else None)


def _hnsw_parts(index: faiss.Index) -> list[Any]:
    """The HNSW graphs inside an index: its own, or its IVF coarse quantizer's."""
    ivf = faiss.try_extract_index_ivf(index)
    part = inner_index(index) if ivf is None else faiss.downcast_index(ivf.quantizer)
    return [part.hnsw] if isinstance(part, faiss.IndexHNSW) else []


def _takes_ids(index: faiss.Index) -> bool:
    """Whether the index stores explicit faiss ids itself (IVF, possibly under pre-transforms); else wrap in IDMap."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _train(index: faiss.Index, source: VectorSource, train_sample: int | None, rng: np.random.Generator,
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
    store.verify_files()  # the fingerprint below comes from the manifest's hashes: make the files answer for them
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
        MissingPathError: naming a missing file. StoreError: an unreadable, altered, newer or inconsistent index,
            or a store whose fingerprint differs from the one recorded at build time (both named).
    """
    path = Path(path)
    params = read_saved_folder(path, (INDEX_FILE, IDS_FILE, PARAMS_FILE), PARAMS_FILE, "index directory")
    if params.get("format_version", 0) > FORMAT_VERSION:
        raise StoreError(f"{path / PARAMS_FILE} has format version {params['format_version']}, newer than this "
                         f"reader ({FORMAT_VERSION}); upgrade mmpretrain")
    recorded = params.get("sha256") or {}
    if not recorded:
        warnings.warn(f"index {path} was saved without file hashes (an older version): its files are not checked",
                      stacklevel=2)
    for name, digest in recorded.items():
        if name not in (INDEX_FILE, IDS_FILE) or sha256_file(path / name) != digest:
            raise StoreError(f"index {path}: {name} was altered (sha256 differs from {PARAMS_FILE}); rebuild the "
                             "index or restore the file")
    try:
        index = faiss.read_index(str(path / INDEX_FILE))
    except RuntimeError as exc:
        raise StoreError(f"cannot read faiss index {path / INDEX_FILE}: {exc}") from exc
    ids = np.load(path / IDS_FILE, allow_pickle=False)
    if index.ntotal != len(ids) or index.ntotal != params["ntotal"]:
        raise StoreError(f"index directory {path} is inconsistent: {INDEX_FILE} holds {index.ntotal} vectors, "
                         f"{IDS_FILE} {len(ids)} ids, {PARAMS_FILE} says {params['ntotal']}")
    result = RetrievalIndex(
        index, ids, params["metric"], params["index_key"], params["normalize"], params["search_params"],
        params.get("tuning"), store_fingerprint=params.get("store_fingerprint"),
        store_path=params.get("store_path"), gpu_index=to_gpus(index, gpu_shard) if resolve_gpu(use_gpu) else None)
    if store is None and result.store_path is not None:
        if Path(result.store_path).is_dir():
            store = result.store_path
        else:
            warnings.warn(f"embedding store {result.store_path} that index {path} was built from is gone; "
                          f"metadata_for needs load_index(path, store=...)", stacklevel=2)
    if store is not None:
        _attach(result, store if isinstance(store, EmbeddingStore) else open_store(store, verify=verify), path)
    return result
