"""The searchable side of the service: an index (or a store searched exactly), hits with their store metadata, and
thumbnails read only from the paths the store recorded for its own ids."""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from mmpretrain.data import load_rgb
from mmpretrain.embeddings import MANIFEST, open_store
from mmpretrain.errors import DataError, MissingPathError
from mmpretrain.retrieval import PARAMS_FILE, RetrievalIndex, build_index, load_index
from mmpretrain.serve.inputs import RequestError

log = logging.getLogger(__name__)

#: Metadata columns a hit carries, where the store has them.
HIT_COLUMNS = ("path", "label", "tags", "title")
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"})


def open_searchable(path: str) -> RetrievalIndex:
    """A saved index folder (with its store when still there), or a store indexed exactly (Flat) at start-up."""
    root = Path(path).expanduser()
    if (root / PARAMS_FILE).is_file():
        return load_index(root, use_gpu="auto")
    if (root / MANIFEST).is_file():
        store = open_store(root, verify="counts")
        return build_index(store, metric="ip" if store.normalized else "l2", index_key="Flat", target_recall=None,
                           progress=False)
    if not root.exists():
        raise MissingPathError(f"index={path}: no such folder")
    raise DataError(f"index={path}: neither a saved index ({PARAMS_FILE}) nor an embedding store ({MANIFEST})")


class Searcher:
    """Top-k search over ``index`` with each hit's store metadata, and thumbnails of the store's images.

    Args:
        index: a :class:`~mmpretrain.retrieval.RetrievalIndex` (its store attached for metadata and thumbnails).
        thumbnail_px: side of a thumbnail; max_pixels: the cap on images read for them.
        cache: thumbnails kept in memory.
    """

    def __init__(self, index: RetrievalIndex, thumbnail_px: int = 160, max_pixels: int = 40_000_000,
                 cache: int = 512) -> None:
        self.index = index
        self.thumbnail_px, self.max_pixels = thumbnail_px, max_pixels
        self.columns: list[str] = []
        self._table = None
        if index.store is not None:
            names = index.store.shard_metadata(0).column_names
            self.columns = [c for c in HIT_COLUMNS if c in names]
            # An id -> row lookup built once: per request it is a binary search, not a pass over every id.
            ids = index.store.ids()
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
            self._table = index.store.metadata(["id", *self.columns]).combine_chunks()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache
        self._lock = Lock()

    @property
    def dim(self) -> int:
        return self.index.dim

    def describe(self) -> dict[str, Any]:
        """What ``/health`` says of the index."""
        store = self.index.store
        return {"ntotal": self.index.ntotal, "dim": self.index.dim, "index_key": self.index.index_key,
                "metric": self.index.metric, "store": str(store.root) if store is not None else None,
                "store_encoder": store.encoder if store is not None else None}

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Store rows of ids (-1 for an id the store does not hold)."""
        ids = np.asarray(ids).astype(str)
        if self._table is None or not len(ids):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._order[at], -1).astype(np.int64)

    def records(self, ids: np.ndarray) -> list[dict[str, Any] | None]:
        """Each id's store metadata (the hit columns), None for ids the store does not hold."""
        rows = self.rows_of(ids)
        found = rows >= 0
        out: list[dict[str, Any] | None] = [None] * len(rows)
        if self._table is not None and found.any():
            taken = self._table.take(pa.array(rows[found])).to_pylist()
            for position, record in zip(np.flatnonzero(found), taken):
                out[position] = record
        return out

    def search(self, queries: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """For each query row, its hits ``{"id", "score", "path", "label", "tags"...}``, best first."""
        scores, ids = self.index.search(queries, k)
        out = []
        for row in range(len(ids)):
            keep = [col for col in range(ids.shape[1])
                    if np.isfinite(scores[row, col]) and not (isinstance(ids[row, col], str) and ids[row, col] == "")]
            records = self.records(ids[row, keep])
            hits = []
            for col, record in zip(keep, records):
                hit: dict[str, Any] = {"id": str(ids[row, col]), "score": float(scores[row, col])}
                if record is not None:
                    hit.update({c: record.get(c) for c in self.columns})
                hits.append(hit)
            out.append(hits)
        return out

    def thumbnail(self, item_id: str) -> bytes:
        """JPEG thumbnail of the store's row ``item_id``, read from the path the store recorded for it.

        Raises:
            RequestError: 404 for an id the store does not hold (or a store without paths), 422 for a file that is
                gone or unreadable.
        """
        with self._lock:
            if item_id in self._cache:
                self._cache.move_to_end(item_id)
                return self._cache[item_id]
        path = self._path_of(item_id)
        data = self._render(path, item_id)
        with self._lock:
            self._cache[item_id] = data
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data

    def _path_of(self, item_id: str) -> Path:
        store = self.index.store
        if store is None or "path" not in self.columns:
            raise RequestError(404, "no_thumbnails", "the loaded index has no store with image paths")
        record = self.records(np.array([item_id]))[0]
        if record is None or not record.get("path"):
            raise RequestError(404, "unknown_id", f"id {item_id!r} is not in the loaded store")
        path = Path(record["path"])
        if not path.is_absolute():
            path = Path(store.id_source or store.root) / path
        return path

    def _render(self, path: Path, item_id: str) -> bytes:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                image = _video_frame(path, self.thumbnail_px)
            else:
                image = load_rgb(str(path), self.max_pixels)
        except Exception as err:  # a store's file may have moved or broken since extraction
            log.warning("thumbnail of %s (%s): %s", item_id, path, err)
            raise RequestError(422, "thumbnail_unreadable", f"id {item_id!r}: its file cannot be read") from None
        image.thumbnail((self.thumbnail_px, self.thumbnail_px))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def _video_frame(path: Path, size: int) -> Image.Image:
    """The middle frame of a video, as the store's thumbnail."""
    from mmpretrain.encoders import VideoClipLoader

    clip = VideoClipLoader(num_frames=1, image_size=size)(path)
    return Image.fromarray(clip[0].permute(1, 2, 0).numpy())
