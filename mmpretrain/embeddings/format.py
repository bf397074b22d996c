"""What every store file is called and holds, and the checks readers and writers share (DESIGN §3)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmpretrain.errors import DataError

FORMAT_NAME = "mmpretrain.embeddings"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUPPORTED_DTYPES = ("float32", "float16")
VERIFY_MODES = ("full", "counts", "none")

SHARD_RE = re.compile(r"^(?:embeddings-(\d{5,})\.npy|metadata-(\d{5,})\.parquet)$")
KNOWN_TYPES = {"id": pa.string(), "path": pa.string(), "tags": pa.list_(pa.string())}


class StoreError(DataError):
    """A store (or data about to be written to one) that cannot be trusted; the message names directory and file."""


#: Characters no id may hold: NUL (numpy and Arrow end C strings there, so ``"a"`` and ``"a\x00b"`` would meet) and
#: every line break ``str.splitlines`` knows (ids are written one per line, and npy cannot read them back).
ID_FORBIDDEN = "\x00\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def find_bad_id(ids: Any) -> tuple[int, str, str] | None:
    """``(row, id, character)`` of the first string id holding a character of :data:`ID_FORBIDDEN`, else None."""
    for row, item in enumerate(ids.tolist() if isinstance(ids, np.ndarray) else ids):
        if isinstance(item, str) and (hit := next((c for c in item if c in ID_FORBIDDEN), None)) is not None:
            return row, item, hit
    return None


def check_id_text(ids: Any, where: str) -> None:
    """Refuse ids that could not come back exactly (see :data:`ID_FORBIDDEN`), naming ``where``, the row and id."""
    bad = find_bad_id(ids)
    if bad is not None:
        row, item, char = bad
        raise StoreError(f"{where}: id {item!r} at row {row} holds {char!r}; ids may not hold NUL or line breaks "
                         "(they would not come back exactly)")


def store_error(root: str | os.PathLike, message: str, file: str | None = None) -> StoreError:
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


def check_dtype(root: str | os.PathLike, dtype: Any, file: str | None = None) -> str:
    """Normalise a dtype spec to its name, refusing anything but float32/float16 (what readers can rely on)."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise store_error(root, f"unsupported dtype {dtype!r}; use one of {SUPPORTED_DTYPES}", file) from exc
    if name not in SUPPORTED_DTYPES:
        raise store_error(root, f"unsupported dtype {name!r}; use one of {SUPPORTED_DTYPES}", file)
    return name


def npy_header(root: Path, file: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an npy shard, read from its header without loading the data."""
    try:
        array = np.load(root / file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise store_error(root, "shard file is missing", file) from exc
    except (ValueError, EOFError, OSError) as exc:
        raise store_error(root, f"not a readable npy array: {exc}", file) from exc
    return array.shape, array.dtype


def parquet_rows(root: Path, file: str) -> int:
    """Row count of a parquet shard, from its footer."""
    try:
        return pq.ParquetFile(root / file).metadata.num_rows
    except FileNotFoundError as exc:
        raise store_error(root, "shard file is missing", file) from exc
    except pa.ArrowException as exc:
        raise store_error(root, f"not a readable parquet file: {exc}", file) from exc


def check_shard_counts(
    root: Path, npy_name: str, parquet_name: str, dim: int, dtype: str, expected: int | None = None
) -> int:
    """Check one shard's npy header (2-D, ``dim``, ``dtype``) and row counts against parquet and manifest."""
    shape, found_dtype = npy_header(root, npy_name)
    if len(shape) != 2 or shape[1] != dim:
        raise store_error(root, f"embeddings have shape {shape}, expected (n, {dim})", npy_name)
    if found_dtype != np.dtype(dtype):
        raise store_error(root, f"embeddings have dtype {found_dtype}, expected {dtype}", npy_name)
    rows = parquet_rows(root, parquet_name)
    if rows != shape[0]:
        raise store_error(root, f"misaligned shard: {npy_name} has {shape[0]} rows but {parquet_name} has {rows}",
                     parquet_name)
    if expected is not None and expected != rows:
        raise store_error(root, f"misaligned shard: manifest says {expected} rows but the files hold {rows}", npy_name)
    return rows
