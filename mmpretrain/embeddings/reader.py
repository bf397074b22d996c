"""Reading a store: memory-mapped shards, metadata as pyarrow, lookups by row and id, checked on open."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mmpretrain._io import sha256_file
from mmpretrain.embeddings.format import (
    FORMAT_VERSION,
    MANIFEST,
    VERIFY_MODES,
    check_dtype,
    check_shard_counts,
    shard_name,
    store_error,
)
from mmpretrain.errors import ConfigError


class EmbeddingStore:
    """Read access to a finalized store: memory-mapped shards, metadata as pyarrow, lookups by row and id.

    Nothing is loaded up front; :meth:`iter_batches` streams the store in row order so stores larger than memory
    can be indexed or exported. Open it with :func:`open_store`.
    """

    def __init__(self, root: str | os.PathLike, verify: str = "full") -> None:
        """Read and check the manifest; see :func:`open_store` for ``verify``."""
        if verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.root = Path(root)
        self.manifest = self._read_manifest()
        self._check_shard_list()
        counts = [shard["count"] for shard in self.manifest["shards"]]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if self._offsets[-1] != self.manifest["count"]:
            raise store_error(self.root, f"manifest count {self.manifest['count']} != sum of shard counts "
                                    f"{int(self._offsets[-1])}", MANIFEST)
        self._id_index: pa.Array | None = None
        self.verified = verify
        if verify != "none":
            self._verify(full=verify == "full")

    def verify_files(self) -> None:
        """Hash every shard file against the manifest (once per open store): what :meth:`fingerprint` vouches for.

        Raises:
            StoreError: a shard differs from its recorded sha256 or count, naming the file.
        """
        if self.verified != "full":
            self._verify(full=True)
            self.verified = "full"

    def _read_manifest(self) -> dict[str, Any]:
        """Load manifest.json, refusing a missing, unparsable or newer-format manifest."""
        path = self.root / MANIFEST
        if not self.root.exists():
            raise store_error(self.root, "folder does not exist")
        if not self.root.is_dir():
            raise store_error(self.root, "not a folder")
        if not path.is_file():
            raise store_error(self.root, "manifest.json is missing (not a store, or its extraction never finished)",
                              MANIFEST)
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise store_error(self.root, f"cannot parse: {exc}", MANIFEST) from exc
        missing = [key for key in ("encoder", "dim", "dtype", "normalized", "count", "shards") if key not in manifest]
        if missing:
            raise store_error(self.root, f"missing keys {missing}", MANIFEST)
        if manifest.get("version", FORMAT_VERSION) > FORMAT_VERSION:
            raise store_error(self.root, f"format version {manifest['version']} is newer than this reader "
                                    f"({FORMAT_VERSION}); upgrade mmpretrain", MANIFEST)
        manifest["dtype"] = check_dtype(self.root, manifest["dtype"], MANIFEST)
        return manifest

    def _check_shard_list(self) -> None:
        """Refuse manifest entries out of order or naming unexpected files, and shard files that are missing."""
        shards = self.manifest["shards"]
        if not shards:
            raise store_error(self.root, "lists no shards", MANIFEST)
        for index, shard in enumerate(shards):
            npy_name, parquet_name = shard_name(index)
            if (shard.get("index"), shard.get("embeddings"), shard.get("metadata")) != (index, npy_name, parquet_name):
                raise store_error(self.root, f"shard entry {index} should be index {index} with {npy_name} and "
                                        f"{parquet_name}, got {shard}", MANIFEST)
            for name in (npy_name, parquet_name):
                if not (self.root / name).is_file():
                    raise store_error(self.root, "shard file listed in manifest.json is missing", name)

    def _verify(self, full: bool) -> None:
        """Check every shard's counts, dim and dtype against the manifest and, if ``full``, both sha256s."""
        shards = self.manifest["shards"]
        for shard in tqdm(shards, desc="verify store", leave=False, disable=None):
            check_shard_counts(self.root, shard["embeddings"], shard["metadata"], self.dim, self.dtype,
                                expected=shard["count"])
            if full:
                for key in ("embeddings", "metadata"):
                    if sha256_file(self.root / shard[key]) != shard[f"{key}_sha256"]:
                        raise store_error(self.root, "was altered: sha256 differs from manifest.json", shard[key])

    @property
    def id_source(self) -> str | None:
        """The folder this store's ids are relative to (recorded by extraction), or None where unknown."""
        value = self.manifest.get("extra", {}).get("id_source")
        return str(value) if value is not None else None

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
            raise store_error(self.root, f"cannot read shard: {exc}", name) from exc
        if array.shape != (shard["count"], self.dim) or array.dtype != np.dtype(self.dtype):
            raise store_error(self.root, f"embeddings are {array.dtype}{array.shape} but manifest.json says "
                                    f"{self.dtype}{(shard['count'], self.dim)}", name)
        return array

    def shard_metadata(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata table of shard ``index`` (``columns`` selects a subset; ``None`` reads all)."""
        shard = self._shard(index)
        name = shard["metadata"]
        try:
            table = pq.read_table(self.root / name, columns=None if columns is None else list(columns))
        except (FileNotFoundError, pa.ArrowException) as exc:
            raise store_error(self.root, f"cannot read metadata columns {columns}: {exc}", name) from exc
        if table.num_rows != shard["count"]:
            raise store_error(self.root, f"misaligned shard: manifest says {shard['count']} rows but {name} has "
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
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
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
        """sha256 over the shard hashes in row order: an index built on this store records it to refuse others.

        It is built from the manifest's hashes, so it speaks for the files only after :meth:`verify_files` (which
        ``open_store(verify="full")`` runs).
        """
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
