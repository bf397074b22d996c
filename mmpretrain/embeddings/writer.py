"""Writing a store: one shard at a time (one writer per DDP rank), then the manifest over all of them.

The npy file of a shard is renamed into place last, so its presence marks a complete shard and an interrupted
extraction can resume with :func:`shard_done`; :func:`finalize_store` refuses gaps, half-written shards, mixed
schemas and duplicate ids before it writes the manifest.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mmpretrain._io import sha256_file, write_failure
from mmpretrain.embeddings.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KNOWN_TYPES,
    MANIFEST,
    SHARD_RE,
    StoreError,
    check_dtype,
    check_id_text,
    check_shard_counts,
    npy_header,
    parquet_rows,
    shard_name,
    store_error,
)
from mmpretrain.embeddings.reader import EmbeddingStore, open_store
from mmpretrain.errors import ConfigError, WriteError


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
        raise store_error(root, f"metadata has no 'id' column (columns: {sorted(columns)})", file)
    arrays = {}
    ids_given = columns["id"]
    check_id_text(ids_given.to_pylist() if isinstance(ids_given, pa.ChunkedArray | pa.Array) else ids_given,
                  f"{root / file}")
    for name, values in columns.items():
        if len(values) != n:
            raise store_error(root, f"metadata column {name!r} has {len(values)} rows but embeddings have {n}", file)
        try:
            array = values if isinstance(values, pa.ChunkedArray) else pa.array(values, type=KNOWN_TYPES.get(name))
            if name in KNOWN_TYPES and array.type != KNOWN_TYPES[name]:
                array = array.cast(KNOWN_TYPES[name])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            hint = " (ids must be strings)" if name == "id" else ""
            raise store_error(root, f"metadata column {name!r} cannot be stored{hint}: {exc}", file) from exc
        arrays[name] = array
    ids = arrays["id"]
    if ids.null_count or pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py():
        raise store_error(root, "metadata column 'id' has null or empty ids", file)
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
    dtype = check_dtype(root, dtype, npy_name)
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise store_error(root, f"embeddings must be 2-D (n, dim), got shape {array.shape}", npy_name)
    if not np.issubdtype(array.dtype, np.number):
        raise store_error(root, f"embeddings must be numeric, got dtype {array.dtype}", npy_name)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below, naming the row
        array = np.ascontiguousarray(array, dtype=dtype)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise store_error(root, f"{bad.size} rows have non-finite values as {dtype} (first: row {bad[0]})", npy_name)
    table = _metadata_table(root, parquet_name, metadata, len(array))

    root.mkdir(parents=True, exist_ok=True)
    npy_path, parquet_path = root / npy_name, root / parquet_name
    # A rewrite must not leave the old npy (the completion mark) next to a new parquet for a moment.
    npy_path.unlink(missing_ok=True)
    tmp_parquet, tmp_npy = _temp_path(parquet_path), _temp_path(npy_path)
    writing = parquet_path
    try:
        pq.write_table(table, tmp_parquet)
        parquet_sha = sha256_file(tmp_parquet)
        _commit(tmp_parquet, parquet_path)
        writing = npy_path
        with open(tmp_npy, "wb") as f:
            np.save(f, array, allow_pickle=False)
        npy_sha = sha256_file(tmp_npy)
        _commit(tmp_npy, npy_path)
    except OSError as err:  # a full disk: pyarrow and numpy raise bare OSErrors that name no file
        parquet_path.unlink(missing_ok=True)  # without its npy the shard reads as unfinished; not left half-made
        needed = array.nbytes + 128 if writing == npy_path else None
        raise WriteError(store_error(root, write_failure(writing, err, needed)).args[0]) from err
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


def shard_done(root: str | os.PathLike, index: int) -> bool:
    """Whether shard ``index`` is complete: both files present and row counts agree (so resuming can skip it)."""
    root = Path(root)
    npy_name, parquet_name = shard_name(index)
    if not (root / npy_name).is_file() or not (root / parquet_name).is_file():
        return False
    try:
        shape, _ = npy_header(root, npy_name)
        return len(shape) == 2 and shape[0] == parquet_rows(root, parquet_name)
    except StoreError:
        return False


def _scan_shards(root: Path) -> int:
    """Number of shards on disk, refusing gaps and half-written shards (each error names the shard file)."""
    npy_indices, parquet_indices = set(), set()
    for entry in os.listdir(root):
        match = SHARD_RE.match(entry)
        if match:
            (npy_indices if match.group(1) else parquet_indices).add(int(match.group(1) or match.group(2)))
    if incomplete := sorted(parquet_indices - npy_indices):
        raise store_error(root, "shard is incomplete (metadata without embeddings); rerun its extraction",
                     shard_name(incomplete[0])[0])
    if orphans := sorted(npy_indices - parquet_indices):
        raise store_error(root, "shard has embeddings but its metadata file is missing", shard_name(orphans[0])[1])
    if not npy_indices:
        raise store_error(root, "no shards found")
    if gaps := sorted(set(range(max(npy_indices))) - npy_indices):
        raise store_error(root, f"shards must be numbered 0..{max(npy_indices)} without gaps; this one is missing",
                     shard_name(gaps[0])[0])
    return len(npy_indices)


def _check_schemas(root: Path, parquet_names: Sequence[str]) -> None:
    """Refuse shards whose metadata columns differ or cannot be concatenated (readers join shards into one table)."""
    first = pq.read_schema(root / parquet_names[0])
    if "id" not in first.names:
        raise store_error(root, "metadata has no 'id' column", parquet_names[0])
    unified = first
    for name in parquet_names[1:]:
        schema = pq.read_schema(root / name)
        if set(schema.names) != set(first.names):
            raise store_error(root, f"metadata columns {sorted(schema.names)} differ from {parquet_names[0]}'s "
                               f"{sorted(first.names)}", name)
        try:
            unified = pa.unify_schemas([unified, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise store_error(root, f"metadata column types clash with earlier shards: {exc}", name) from exc


def _check_unique_ids(root: Path, parquet_names: Sequence[str]) -> None:
    """Refuse a store where an id appears twice: ``row_of`` and every index keyed by id would be ambiguous."""
    columns = [pq.read_table(root / name, columns=["id"]).column("id").cast(pa.string()) for name in parquet_names]
    counts = pc.value_counts(pa.chunked_array([chunk for col in columns for chunk in col.chunks], type=pa.string()))
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        dup = duplicated[0]["values"].as_py()
        holders = [name for name, col in zip(parquet_names, columns) if pc.any(pc.equal(col, dup)).as_py()]
        raise store_error(root, f"id {dup!r} appears more than once (in {', '.join(holders)}); "
                           f"{len(duplicated)} ids are duplicated in all", holders[0])


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
        raise store_error(root, "directory does not exist")
    dtype = check_dtype(root, dtype)
    names = [shard_name(i) for i in range(_scan_shards(root))]
    counts = [check_shard_counts(root, npy_name, parquet_name, dim, dtype) for npy_name, parquet_name in names]
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
    except OSError as err:
        raise WriteError(store_error(root, write_failure(root / MANIFEST, err)).args[0]) from err
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


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
        raise store_error(root, f"embeddings must be 2-D (n, dim), got shape {array.shape}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    table = metadata if isinstance(metadata, pa.Table) else None
    lengths = {"table": table.num_rows} if table is not None else {name: len(v) for name, v in metadata.items()}
    if wrong := {name: n for name, n in lengths.items() if n != len(array)}:
        raise store_error(root, f"metadata rows {wrong} do not match {len(array)} embedding rows")
    if root.is_dir():
        existing = [p for p in root.iterdir() if p.name == MANIFEST or SHARD_RE.match(p.name)]
        if existing and not overwrite:
            raise store_error(root, f"already holds a store ({len(existing)} files); pass overwrite=True to replace it")
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
