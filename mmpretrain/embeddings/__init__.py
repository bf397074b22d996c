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

from mmpretrain.embeddings.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ID_FORBIDDEN,
    MANIFEST,
    SUPPORTED_DTYPES,
    VERIFY_MODES,
    StoreError,
    check_id_text,
    find_bad_id,
    shard_name,
)
from mmpretrain.embeddings.reader import EmbeddingStore, open_store
from mmpretrain.embeddings.writer import finalize_store, shard_done, write_shard, write_store

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ID_FORBIDDEN",
    "MANIFEST",
    "SUPPORTED_DTYPES",
    "VERIFY_MODES",
    "EmbeddingStore",
    "StoreError",
    "check_id_text",
    "finalize_store",
    "find_bad_id",
    "open_store",
    "shard_done",
    "shard_name",
    "write_shard",
    "write_store",
]
