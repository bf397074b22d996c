"""What an export reads: checked ``(ids, vectors)`` batches from an embedding store or from vectors in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence

import numpy as np

from mmpretrain.embeddings import EmbeddingStore, open_store
from mmpretrain.recsys.validation import FeatureError, as_matrix, check_finite, check_ids

Source = str | os.PathLike | EmbeddingStore | np.ndarray | Sequence[np.ndarray]


class ExportInput:
    """Checked ``(ids, float32 vectors)`` batches from a store (streamed) or from vectors in memory."""

    def __init__(self, source: Source, ids: Sequence[str] | np.ndarray | None, forbidden: str, verify: str) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = open_store(source, verify=verify)
        self.forbidden = forbidden
        if isinstance(source, EmbeddingStore):
            if ids is not None:
                raise ValueError("ids come from the store's id column; do not pass ids with a store")
            self.store, self.ids, self.matrix = source, None, None
            self.dim, self.count, self.name = source.dim, source.count, str(source.root)
            self.id_source = source.id_source
        else:
            if ids is None:
                raise FeatureError("vectors were given without ids: pass ids= (one per vector)")
            self.store, self.ids = None, check_ids(ids, forbidden)
            self.matrix = as_matrix(source, self.ids)
            self.dim, self.count, self.name = self.matrix.shape[1], len(self.ids), "vectors in memory"
            self.id_source = None
        if self.count == 0:
            raise FeatureError(f"nothing to export: {self.name} holds no items")

    def first_id(self) -> str:
        """The first item's id (named when every vector has the wrong width)."""
        if self.store is not None:
            return str(self.store.shard_metadata(0, ["id"]).column("id")[0].as_py())
        return str(self.ids[0])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Row-ordered batches; store ids are checked here, the store itself already refused NaN and inf."""
        if self.store is None:
            for start in range(0, self.count, batch_size):
                yield self.ids[start:start + batch_size], self.matrix[start:start + batch_size]
            return
        for chunk, columns in self.store.iter_batches(batch_size, columns=("id",)):
            batch_ids = check_ids(columns["id"], self.forbidden)
            check_finite(chunk, batch_ids)
            yield batch_ids, chunk

    def sample(self, size: int, seed: int) -> np.ndarray:
        """A uniform random sample of rows (without replacement), the PCA's fit set."""
        rows = np.sort(np.random.default_rng(seed).choice(self.count, size=min(size, self.count), replace=False))
        return self.store.take(rows) if self.store is not None else self.matrix[rows]


def content_hashes(vectors: np.ndarray) -> list[str]:
    """blake2b-128 of each row's float32 bytes: equal hashes mean the source vector did not change."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows]
