"""The embedding store: the one on-disk format every consumer (few-shot, retrieval, recsys) reads.

A store is a directory holding

- ``embeddings-NNNNN.npy``: one ``(n, dim)`` float32 or float16 array per shard,
- ``metadata-NNNNN.parquet``: the shard's rows in the same order, with a string ``id`` column and, where known,
  ``path``, ``label``, ``tags`` (list of strings) and any extra columns,
- ``manifest.json``: encoder, dim, dtype, normalized, total count and, per shard, the file names, row count and
  the sha256 of both files.

Shards are written independently (one writer per DDP rank) with :func:`write_shard`; the npy file is renamed into
place last, so its presence marks a complete shard and an interrupted extraction can resume with
:func:`shard_done`. :func:`finalize_store` then scans the shards and writes the manifest. Readers
(:func:`open_store`) check counts and hashes and refuse a misaligned or altered store with a :class:`StoreError`
naming the shard file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mmpretrain._io import sha256_file

FORMAT_NAME = "mmpretrain.embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUPPORTED_DTYPES = ("float32", "float16")
VERIFY_MODES = ("full", "counts", "none")

_SHARD_RE = re.compile(r"^(?:embeddings-(\d{5,})\.npy|metadata-(\d{5,})\.parquet)$")
_KNOWN_TYPES = {"id": pa.string(), "path": pa.string(), "tags": pa.list_(pa.string())}


class StoreError(ValueError):
    """A store (or data about to be written to one) that cannot be trusted; the message names directory and file."""


def _error(root: str | os.PathLike, message: str, file: str | None = None) -> StoreError:
    """Build a StoreError whose message always starts with the store directory and, if known, the shard file."""
    where = f"embedding store {os.fspath(root)}"
    if file is not None:
        where += f", {file}"
    return StoreError(f"{where}: {message}")


def shard_name(index: int) -> tuple[str, str]:
    """File names of shard ``index``: ``("embeddings-00003.npy", "metadata-00003.parquet")``."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"embeddings-{index:05d}.npy", f"metadata-{index:05d}.parquet"


def _check_dtype(root: str | os.PathLike, dtype: Any, file: str | None = None) -> str:
    """Normalise a dtype spec to its name, refusing anything but float32/float16 (what readers can rely on)."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise _error(root, f"unsupported dtype {dtype!r}; use one of {SUPPORTED_DTYPES}", file) from exc
    if name not in SUPPORTED_DTYPES:
        raise _error(root, f"unsupported dtype {name!r}; use one of {SUPPORTED_DTYPES}", file)
    return name


def _temp_path(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same filesystem, so ``os.replace`` is atomic; unique per writer)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _commit(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``final``, so readers never see a half-written file."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _metadata_table(root: Path, file: str, metadata: Mapping[str, Any] | pa.Table, n: int) -> pa.Table:
    """Turn per-row metadata into a table, checking the ``id`` column and that every column has ``n`` rows."""
    if isinstance(metadata, pa.Table):
        columns = {name: metadata.column(name) for name in metadata.column_names}
    else:
        columns = dict(metadata)
    if "id" not in columns:
        raise _error(root, f"metadata has no 'id' column (columns: {sorted(columns)})", file)
    arrays = {}
    for name, values in columns.items():
        if len(values) != n:
            raise _error(root, f"metadata column {name!r} has {len(values)} rows but embeddings have {n}", file)
        try:
            array = values if isinstance(values, pa.ChunkedArray) else pa.array(values, type=_KNOWN_TYPES.get(name))
            if name in _KNOWN_TYPES and array.type != _KNOWN_TYPES[name]:
                array = array.cast(_KNOWN_TYPES[name])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            hint = " (ids must be strings)" if name == "id" else ""
            raise _error(root, f"metadata column {name!r} cannot be stored{hint}: {exc}", file) from exc
        arrays[name] = array
    ids = arrays["id"]
    if ids.null_count or pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
        raise _error(root, "metadata column 'id' has null or empty ids", file)
    return pa.table(arrays)


def write_shard(
    root: str | os.PathLike,
    index: int,
    embeddings: np.ndarray,
    metadata: Mapping[str, Sequence[Any] | np.ndarray] | pa.Table,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Write one shard pair atomically and return its manifest entry.

    The parquet file goes first and the npy file last, each through a temporary name and ``os.replace``, so the
    npy file's presence means the shard is complete. The manifest is not touched: several processes (one per
    DDP rank) may write shards concurrently, and :func:`finalize_store` merges them afterwards.

    Args:
        root: store directory (created if missing).
        index: shard number; row order of the store follows shard numbers.
        embeddings: ``(n, dim)`` array; must be finite after conversion to ``dtype``.
        metadata: column name -> ``n`` values (or a pyarrow Table); ``id`` (strings) is required.
        dtype: on-disk dtype, ``"float32"`` or ``"float16"``.

    Returns:
        ``{"index", "embeddings", "metadata", "count", "embeddings_sha256", "metadata_sha256"}``.
    """
    root = Path(root)
    npy_name, parquet_name = shard_name(index)
    dtype = _check_dtype(root, dtype, npy_name)
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise _error(root, f"embeddings must be 2-D (n, dim), got shape {array.shape}", npy_name)
    if not np.issubdtype(array.dtype, np.number):
        raise _error(root, f"embeddings must be numeric, got dtype {array.dtype}", npy_name)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below, naming the row
        array = np.ascontiguousarray(array, dtype=dtype)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise _error(root, f"{bad.size} rows have non-finite values as {dtype} (first: row {bad[0]})", npy_name)
    table = _metadata_table(root, parquet_name, metadata, len(array))

    root.mkdir(parents=True, exist_ok=True)
    npy_path, parquet_path = root / npy_name, root / parquet_name
    # A rewrite must not leave the old npy (the completion mark) next to a new parquet for a moment.
    npy_path.unlink(missing_ok=True)
    tmp_parquet, tmp_npy = _temp_path(parquet_path), _temp_path(npy_path)
    try:
        pq.write_table(table, tmp_parquet)
        parquet_sha = sha256_file(tmp_parquet)
        _commit(tmp_parquet, parquet_path)
        with open(tmp_npy, "wb") as f:
            np.save(f, array, allow_pickle=False)
        npy_sha = sha256_file(tmp_npy)
        _commit(tmp_npy, npy_path)
    finally:
        tmp_parquet.unlink(missing_ok=True)
        tmp_npy.unlink(missing_ok=True)
    return {
        "index": index,
        "embeddings": npy_name,
        "metadata": parquet_name,
        "count": len(array),
        "embeddings_sha256": npy_sha,
        "metadata_sha256": parquet_sha,
    }


def _npy_header(root: Path, file: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an npy shard, read from its header without loading the data."""
    try:
        array = np.load(root / file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise _error(root, "shard file is missing", file) from exc
    except (ValueError, EOFError, OSError) as exc:
        raise _error(root, f"not a readable npy array: {exc}", file) from exc
    return array.shape, array.dtype


def _parquet_rows(root: Path, file: str) -> int:
    """Row count of a parquet shard, from its footer."""
    try:
        return pq.ParquetFile(root / file).metadata.num_rows
    except FileNotFoundError as exc:
        raise _error(root, "shard file is missing", file) from exc
    except pa.ArrowException as exc:
        raise _error(root, f"not a readable parquet file: {exc}", file) from exc


def shard_done(root: str | os.PathLike, index: int) -> bool:
    """Whether shard ``index`` is complete: both files present and row counts agree (so resuming can skip it)."""
    root = Path(root)
    npy_name, parquet_name = shard_name(index)
    if not (root / npy_name).is_file() or not (root / parquet_name).is_file():
        return False
    try:
        shape, _ = _npy_header(root, npy_name)
        return len(shape) == 2 and shape[0] == _parquet_rows(root, parquet_name)
    except StoreError:
        return False


def _scan_shards(root: Path) -> int:
    """Number of shards on disk, refusing gaps and half-written shards (each error names the shard file)."""
    npy_indices, parquet_indices = set(), set()
    for entry in os.listdir(root):
        match = _SHARD_RE.match(entry)
        if match:
            (npy_indices if match.group(1) else parquet_indices).add(int(match.group(1) or match.group(2)))
    if incomplete := sorted(parquet_indices - npy_indices):
        raise _error(root, "shard is incomplete (metadata without embeddings); rerun its extraction",
                     shard_name(incomplete[0])[0])
    if orphans := sorted(npy_indices - parquet_indices):
        raise _error(root, "shard has embeddings but its metadata file is missing", shard_name(orphans[0])[1])
    if not npy_indices:
        raise _error(root, "no shards found")
    if gaps := sorted(set(range(max(npy_indices))) - npy_indices):
        raise _error(root, f"shards must be numbered 0..{max(npy_indices)} without gaps; this one is missing",
                     shard_name(gaps[0])[0])
    return len(npy_indices)


def _check_schemas(root: Path, parquet_names: Sequence[str]) -> None:
    """Refuse shards whose metadata columns differ or cannot be concatenated (readers join shards into one table)."""
    first = pq.read_schema(root / parquet_names[0])
    if "id" not in first.names:
        raise _error(root, "metadata has no 'id' column", parquet_names[0])
    unified = first
    for name in parquet_names[1:]:
        schema = pq.read_schema(root / name)
        if set(schema.names) != set(first.names):
            raise _error(root, f"metadata columns {sorted(schema.names)} differ from {parquet_names[0]}'s "
                               f"{sorted(first.names)}", name)
        try:
            unified = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _error(root, f"metadata column types clash with earlier shards: {exc}", name) from exc


def _check_unique_ids(root: Path, parquet_names: Sequence[str]) -> None:
    """Refuse a store where an id appears twice: ``row_of`` and every index keyed by id would be ambiguous."""
    columns = [pq.read_table(root / name, columns=["id"]).column("id").cast(pa.string()) for name in parquet_names]
    counts = pc.value_counts(pa.chunked_array([chunk for col in columns for chunk in col.chunks], type=pa.string()))
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        dup = duplicated[0]["values"].as_py()
        holders = [name for name, col in zip(parquet_names, columns) if pc.any(pc.equal(col, dup)).as_py()]
        raise _error(root, f"id {dup!r} appears more than once (in {', '.join(holders)}); "
                           f"{len(duplicated)} ids are duplicated in all", holders[0])


def _check_shard_counts(
    root: Path, npy_name: str, parquet_name: str, dim: int, dtype: str, expected: int | None = None
) -> int:
    """Check one shard's npy header (2-D, ``dim``, ``dtype``) and row counts against parquet and manifest."""
    shape, found_dtype = _npy_header(root, npy_name)
    if len(shape) != 2 or shape[1] != dim:
        raise _error(root, f"embeddings have shape {shape}, expected (n, {dim})", npy_name)
    if found_dtype != np.dtype(dtype):
        raise _error(root, f"embeddings have dtype {found_dtype}, expected {dtype}", npy_name)
    rows = _parquet_rows(root, parquet_name)
    if rows != shape[0]:
        raise _error(root, f"misaligned shard: {npy_name} has {shape[0]} rows but {parquet_name} has {rows}",
                     parquet_name)
    if expected is not None and expected != rows:
        raise _error(root, f"misaligned shard: manifest says {expected} rows but the files hold {rows}", npy_name)
    return rows


def finalize_store(
    root: str | os.PathLike,
    encoder: str,
    dim: int,
    dtype: str,
    normalized: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scan the shards in ``root`` and write ``manifest.json`` atomically; returns the manifest.

    Run once, after every writer has finished. Shards must be numbered 0..n-1 without gaps, each with the declared
    ``dim`` and ``dtype`` and matching npy/parquet row counts, ids unique across the store, and metadata columns
    the same in every shard.

    Args:
        root: store directory.
        encoder: name of the encoder that produced the embeddings (stored for provenance).
        dim: embedding width every shard must have.
        dtype: on-disk dtype every shard must have.
        normalized: whether rows are L2-normalized (consumers pick inner-product vs L2 search from it).
        extra: any JSON-serialisable provenance (config, checkpoint sha256), stored under ``"extra"``.
    """
    root = Path(root)
    if not root.is_dir():
        raise _error(root, "directory does not exist")
    dtype = _check_dtype(root, dtype)
    names = [shard_name(i) for i in range(_scan_shards(root))]
    counts = [_check_shard_counts(root, npy_name, parquet_name, dim, dtype) for npy_name, parquet_name in names]
    _check_schemas(root, [parquet_name for _, parquet_name in names])
    _check_unique_ids(root, [parquet_name for _, parquet_name in names])
    shards = [
        {
            "index": index,
            "embeddings": npy_name,
            "metadata": parquet_name,
            "count": count,
            "embeddings_sha256": sha256_file(root / npy_name),
            "metadata_sha256": sha256_file(root / parquet_name),
        }
        for index, ((npy_name, parquet_name), count) in enumerate(
            tqdm(list(zip(names, counts)), desc="hash shards", leave=False, disable=None)
        )
    ]
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "encoder": encoder,
        "dim": int(dim),
        "dtype": dtype,
        "normalized": bool(normalized),
        "count": sum(shard["count"] for shard in shards),
        "shards": shards,
        "extra": dict(extra or {}),
    }
    tmp = _temp_path(root / MANIFEST)
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        _commit(tmp, root / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


class EmbeddingStore:
    """Read access to a finalized store: memory-mapped shards, metadata as pyarrow, lookups by row and id.

    Nothing is loaded up front; :meth:`iter_batches` streams the store in row order so stores larger than memory
    can be indexed or exported. Open it with :func:`open_store`.
    """

    def __init__(self, root: str | os.PathLike, verify: str = "full") -> None:
        """Read and check the manifest; see :func:`open_store` for ``verify``."""
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.root = Path(root)
        self.manifest = self._read_manifest()
        self._check_shard_list()
        counts = [shard["count"] for shard in self.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if self._offsets[-1] != self.manifest["count"]:
            raise _error(self.root, f"manifest count {self.manifest['count']} != sum of shard counts "
                                    f"{int(self._offsets[-1])}", MANIFEST)
        self._id_index: pa.Array | None = None
        if verify != "none":
            self._verify(full=verify == "full")

    def _read_manifest(self) -> dict[str, Any]:
        """Load manifest.json, refusing a missing, unparsable or newer-format manifest."""
        path = self.root / MANIFEST
        if not path.is_file():
            raise _error(self.root, "manifest.json is missing (not a store, or finalize_store was never run)",
                         MANIFEST)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _error(self.root, f"cannot parse: {exc}", MANIFEST) from exc
        missing = [key for key in ("encoder", "dim", "dtype", "normalized", "count", "shards") if key not in manifest]
        if missing:
            raise _error(self.root, f"missing keys {missing}", MANIFEST)
        if manifest.get("version", FORMAT_VERSION) > FORMAT_VERSION:
            raise _error(self.root, f"format version {manifest['version']} is newer than this reader "
                                    f"({FORMAT_VERSION}); upgrade mmpretrain", MANIFEST)
        manifest["dtype"] = _check_dtype(self.root, manifest["dtype"], MANIFEST)
        return manifest

    def _check_shard_list(self) -> None:
        """Refuse manifest entries out of order or naming unexpected files, and shard files that are missing."""
        shards = self.manifest["shards"]
        if not shards:
            raise _error(self.root, "lists no shards", MANIFEST)
        for index, shard in enumerate(shards):
            npy_name, parquet_name = shard_name(index)
            if (shard.get("index"), shard.get("embeddings"), shard.get("metadata")) != (index, npy_name, parquet_name):
                raise _error(self.root, f"shard entry {index} should be index {index} with {npy_name} and "
                                        f"{parquet_name}, got {shard}", MANIFEST)
            for name in (npy_name, parquet_name):
                if not (self.root / name).is_file():
                    raise _error(self.root, "shard file listed in manifest.json is missing", name)

    def _verify(self, full: bool) -> None:
        """Check every shard's counts, dim and dtype against the manifest and, if ``full``, both sha256s."""
        shards = self.manifest["shards"]
        for shard in tqdm(shards, desc="verify store", leave=False, disable=None):
            _check_shard_counts(self.root, shard["embeddings"], shard["metadata"], self.dim, self.dtype,
                                expected=shard["count"])
            if full:
                for key in ("embeddings", "metadata"):
                    if sha256_file(self.root / shard[key]) != shard[f"{key}_sha256"]:
                        raise _error(self.root, "was altered: sha256 differs from manifest.json", shard[key])

    @property
    def encoder(self) -> str:
        """Name of the encoder that produced the embeddings."""
        return self.manifest["encoder"]

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.manifest["dim"])

    @property
    def dtype(self) -> str:
        """On-disk dtype name (``"float32"`` or ``"float16"``); reads return float32 unless asked otherwise."""
        return self.manifest["dtype"]

    @property
    def normalized(self) -> bool:
        """Whether rows are L2-normalized."""
        return bool(self.manifest["normalized"])

    @property
    def count(self) -> int:
        """Total number of rows."""
        return int(self.manifest["count"])

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self.manifest["shards"])

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (f"EmbeddingStore({os.fspath(self.root)!r}, encoder={self.encoder!r}, count={self.count}, "
                f"dim={self.dim}, dtype={self.dtype}, shards={self.num_shards})")

    def _shard(self, index: int) -> dict[str, Any]:
        """Manifest entry of shard ``index``, with a plain IndexError for a bad number."""
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard {index} out of range: store {self.root} has {self.num_shards} shards")
        return self.manifest["shards"][index]

    def shard_embeddings(self, index: int) -> np.memmap:
        """Memory-mapped ``(count, dim)`` array of shard ``index`` in the on-disk dtype (pages load on access)."""
        shard = self._shard(index)
        name = shard["embeddings"]
        try:
            array = np.load(self.root / name, mmap_mode="r", allow_pickle=False)
        except (FileNotFoundError, ValueError) as exc:
            raise _error(self.root, f"cannot read shard: {exc}", name) from exc
        if array.shape != (shard["count"], self.dim) or array.dtype != np.dtype(self.dtype):
            raise _error(self.root, f"embeddings are {array.dtype}{array.shape} but manifest.json says "
                                    f"{self.dtype}{(shard['count'], self.dim)}", name)
        return array

    def shard_metadata(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata table of shard ``index`` (``columns`` selects a subset; ``None`` reads all)."""
        shard = self._shard(index)
        name = shard["metadata"]
        try:
            table = pq.read_table(self.root / name, columns=None if columns is None else list(columns))
        except (FileNotFoundError, pa.ArrowException) as exc:
            raise _error(self.root, f"cannot read metadata columns {columns}: {exc}", name) from exc
        if table.num_rows != shard["count"]:
            raise _error(self.root, f"misaligned shard: manifest says {shard['count']} rows but {name} has "
                                    f"{table.num_rows}", name)
        return table

    def iter_batches(
        self, batch_size: int = 8192, columns: Sequence[str] | None = ("id",)
    ) -> Iterator[tuple[np.ndarray, dict[str, list[Any]]]]:
        """Stream ``(float32 embeddings, {column: values})`` batches in row order, crossing shard boundaries.

        Every batch has ``batch_size`` rows except the last; at most one shard's metadata columns and one batch
        of embeddings are in memory at a time. ``columns=None`` yields all metadata columns, ``()`` none.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        want_metadata = columns is None or len(columns) > 0
        emb_parts: list[np.ndarray] = []
        meta_parts: list[pa.Table] = []
        pending = 0
        for index in range(self.num_shards):
            embeddings = self.shard_embeddings(index)
            metadata = self.shard_metadata(index, columns) if want_metadata else None
            start = 0
            while start < len(embeddings):
                step = min(batch_size - pending, len(embeddings) - start)
                emb_parts.append(embeddings[start:start + step])
                if metadata is not None:
                    meta_parts.append(metadata.slice(start, step))
                pending += step
                start += step
                if pending == batch_size:
                    yield _join(emb_parts, meta_parts)
                    emb_parts, meta_parts, pending = [], [], 0
        if pending:
            yield _join(emb_parts, meta_parts)

    def embeddings(self, dtype: Any = np.float32) -> np.ndarray:
        """All rows as one in-memory array (for small stores; use :meth:`iter_batches` for large ones)."""
        return np.concatenate([self.shard_embeddings(i) for i in range(self.num_shards)], dtype=dtype)

    def metadata(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All metadata rows in row order as one table (``columns`` selects a subset)."""
        tables = [self.shard_metadata(i, columns) for i in range(self.num_shards)]
        return pa.concat_tables(tables, promote_options="permissive")

    def ids(self) -> np.ndarray:
        """All ids in row order, as a numpy string array."""
        return self._ids().to_numpy(zero_copy_only=False).astype(str)

    def _ids(self) -> pa.Array:
        """All ids as one pyarrow array, cached: it backs :meth:`row_of`'s hash lookup."""
        if self._id_index is None:
            self._id_index = self.metadata(["id"]).column("id").combine_chunks()
        return self._id_index

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 embeddings of the given global rows, in the given order; reads only those rows from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            bad = rows[(rows < 0) | (rows >= self.count)]
            raise IndexError(f"rows {bad[:5].tolist()} out of range [0, {self.count}) in store {self.root}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for index in np.unique(shard_of):
            mask = shard_of == index
            out[mask] = self.shard_embeddings(int(index))[rows[mask] - self._offsets[index]]
        return out

    def row_of(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Global row (int64) of each id; refuses ids the store does not hold, naming them."""
        wanted = pa.array(ids, type=pa.string())
        rows = pc.index_in(wanted, value_set=self._ids())
        if rows.null_count:
            unknown = wanted.filter(rows.is_null()).to_pylist()
            shown = ", ".join(repr(i) for i in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise KeyError(f"{len(unknown)} ids not in store {self.root}: {shown}")
        return rows.to_numpy().astype(np.int64)

    def fingerprint(self) -> str:
        """sha256 over the shard hashes in row order: an index built on this store records it to refuse others."""
        digest = hashlib.sha256()
        for shard in self.manifest["shards"]:
            digest.update(f"{shard['embeddings_sha256']}:{shard['metadata_sha256']}\n".encode())
        return digest.hexdigest()


def _join(emb_parts: list[np.ndarray], meta_parts: list[pa.Table]) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Concatenate batch pieces gathered across shards into a float32 array and a column dict."""
    embeddings = np.concatenate(emb_parts, dtype=np.float32)
    metadata = pa.concat_tables(meta_parts, promote_options="permissive").to_pydict() if meta_parts else {}
    return embeddings, metadata


def open_store(root: str | os.PathLike, verify: str = "full") -> EmbeddingStore:
    """Open a finalized store, checking it first.

    Args:
        root: store directory.
        verify: ``"full"`` checks counts, dim, dtype and the sha256 of every file (reads the whole store once);
            ``"counts"`` checks manifest vs npy header vs parquet row counts, dim and dtype (reads headers only);
            ``"none"`` only reads the manifest and checks the listed files exist.

    Raises:
        StoreError: naming the shard file, for a missing manifest or file, misaligned counts, an altered file,
            or a dim/dtype that disagrees with the manifest.
    """
    return EmbeddingStore(root, verify=verify)


def write_store(
    root: str | os.PathLike,
    embeddings: np.ndarray,
    metadata: Mapping[str, Sequence[Any] | np.ndarray] | pa.Table,
    encoder: str,
    normalized: bool,
    dtype: str = "float32",
    shard_size: int = 100_000,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> EmbeddingStore:
    """Write in-memory embeddings and metadata as a complete store (split into shards) and open it.

    Refuses a directory that already holds store files unless ``overwrite``, which removes only those files, so
    stale shards from an earlier, larger store can never be merged into this one.
    """
    root = Path(root)
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise _error(root, f"embeddings must be 2-D (n, dim), got shape {array.shape}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    table = metadata if isinstance(metadata, pa.Table) else None
    lengths = {"table": table.num_rows} if table is not None else {name: len(v) for name, v in metadata.items()}
    if wrong := {name: n for name, n in lengths.items() if n != len(array)}:
        raise _error(root, f"metadata rows {wrong} do not match {len(array)} embedding rows")
    if root.is_dir():
        existing = [p for p in root.iterdir() if p.name == MANIFEST or _SHARD_RE.match(p.name)]
        if existing and not overwrite:
            raise _error(root, f"already holds a store ({len(existing)} files); pass overwrite=True to replace it")
        for path in existing:
            path.unlink(missing_ok=True)
    for index, start in enumerate(range(0, max(len(array), 1), shard_size)):
        stop = start + shard_size
        if table is not None:
            part = table.slice(start, shard_size)
        else:
            part = {name: values[start:stop] for name, values in metadata.items()}
        write_shard(root, index, array[start:stop], part, dtype=dtype)
    finalize_store(root, encoder=encoder, dim=array.shape[1], dtype=dtype, normalized=normalized, extra=extra)
    return open_store(root, verify="counts")
