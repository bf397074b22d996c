"""Rows from WebDataset shards: input shard ``i`` becomes store shard ``i``, each sample a row keyed by its key.

Rows follow tar order inside a shard and shard order across the store, so the store is the same on 1 and N
processes. The shards still to do are dealt to the ranks (``pending[rank::world]``) and, inside a rank, to the
DataLoader workers; a worker reads a whole shard and flags its last row with the number of samples it read and, if
the shard ended early (cut off, a failing ``pipe:``, an ``http`` error), why.

Resuming is per shard: a finished store shard is kept, an unfinished one is read again. A store shard whose input
shard ended early is kept for this run but read again by the next; its lost samples (its ``shards.json`` count
minus what was read) count as failures. A finished shard whose input changed since (size and mtime of a file, ETag
or Last-Modified of an ``http(s)`` URL; a ``pipe:`` cannot be checked) is extracted again.

A sample that fails (undecodable media, a missing member, a corrupt member, a key a store cannot hold) is left out
and listed in ``failed.jsonl`` with its key (``repr`` of a key that is not printable); the rest of its shard is kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpretrain.data import ShardError
from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS
from mmpretrain.data.shards import SampleError, read_index, read_shard, sample_image, sample_json, sample_label
from mmpretrain.data.shards import shard_name as input_shard_name
from mmpretrain.embeddings import find_bad_id, shard_done
from mmpretrain.encoders import Encoder
from mmpretrain.extraction.run import parts_dir
from mmpretrain.extraction.sources import row_item

__all__ = ["ShardExtractionDataset", "ShardSource", "input_fingerprint", "is_shard_input"]

log = logging.getLogger(__name__)

_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_HEAD_TIMEOUT_S = 10


def is_shard_input(spec: str | Sequence[str]) -> bool:
    """Whether ``input=`` names WebDataset shards (a ``.tar`` pattern or URL, ``pipe:``) rather than a folder/file."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        return False
    first = wds.shardlists.expand_urls(str(specs[0]).split()[0])[0] if not str(specs[0]).startswith("pipe:") else ""
    return not first or (first.split("?")[0].endswith(_SHARD_SUFFIXES) and not Path(first).is_dir())


def input_fingerprint(url: str) -> dict[str, Any] | None:
    """What tells a changed input shard: size and mtime of a file, ETag / Last-Modified / size of an ``http(s)``
    URL (a HEAD request); None where nothing can be known now (a ``pipe:``, a server that does not answer)."""
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_HEAD_TIMEOUT_S) as r:
                found = {"etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified"),
                         "size": r.headers.get("Content-Length")}
        except (OSError, urllib.error.URLError, ValueError):
            return None
        found = {k: v for k, v in found.items() if v is not None}
        return found or None
    if "://" in url or url.startswith("pipe:"):
        return None
    try:
        stat = os.stat(url)
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _key_problem(key: str) -> str | None:
    """Why a sample key cannot be a store id (None when it can)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    bad = find_bad_id([key])
    return None if bad is None else f"holds {bad[2]!r}"


class _SampleRows:
    """Raw shard sample -> one extraction row (pixels or an error), for images or videos; picklable."""

    def __init__(self, encoder: Encoder, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.video = encoder.kind == "video"
        self.max_pixels = max_pixels
        self.loader = encoder.batch_loader(max_pixels)

    def _media(self, raw: dict[str, Any], columns: dict[str, str]) -> torch.Tensor:
        if self.video:
            from mmpretrain.video import shard_record, video_member

            record = shard_record(raw)
            columns.update(title=record.title or "", ocr=" ".join(record.ocr), label=record.label or "",
                           tags=json.dumps(list(record.tags)))
            return self.loader(video_member(raw)[1], name=record.video)
        label, tags = sample_label(raw), sample_json(raw).get("tags") or []
        columns.update(label="" if label is None else str(label), tags=json.dumps([str(t) for t in tags]))
        return self.loader(sample_image(raw, self.max_pixels))

    def failed(self, error: ShardError, shard: int, pos: int) -> dict[str, Any]:
        """The row of a sample the reader could not read (a corrupt or oversized member): failed, with its reason."""
        empty = torch.zeros(self.loader.shape, dtype=torch.uint8)
        return row_item(shard, pos, empty, f"{error.reason}: {error.detail}", id=str(error.key), title="", ocr="",
                        label="", tags="[]")

    def __call__(self, raw: dict[str, Any], shard: int, pos: int) -> dict[str, Any]:
        key = raw["__key__"]
        columns = {"id": key, "title": "", "ocr": "", "label": "", "tags": "[]"}
        problem = _key_problem(key)
        try:
            if problem is not None:
                raise SampleError("unstorable_key", f"the key {key!r} {problem}, which a store id cannot hold")
            pixels = self._media(raw, columns)
        except (SampleError, ValueError, RuntimeError) as err:  # VideoDecodeError is a RuntimeError
            log.warning("cannot embed sample %r of %s: %s", key, raw.get("__url__"), err)
            if problem is not None:
                columns["id"] = repr(key)  # printable, and storable in failed.jsonl
            return row_item(shard, pos, torch.zeros(self.loader.shape, dtype=torch.uint8),
                            f"{type(err).__name__}: {err}", **columns)
        return row_item(shard, pos, pixels, **columns)


class ShardExtractionDataset(IterableDataset):
    """Rows of this rank's shards, a whole shard per worker; the last row of a shard says how it ended."""

    def __init__(self, urls: Sequence[str], shards: Sequence[int], rows: _SampleRows) -> None:
        self.urls, self.shards, self.rows = list(urls), list(shards), rows

    def _shard_rows(self, shard: int) -> Iterator[dict[str, Any]]:
        count, end_error, previous = 0, "", None
        for raw in read_shard(self.urls[shard]):
            if isinstance(raw, ShardError) and raw.ends_shard:
                end_error = f"{raw.reason}: {raw.detail}"
                continue
            row = self.rows.failed(raw, shard, count) if isinstance(raw, ShardError) else self.rows(raw, shard, count)
            count += 1
            if previous is not None:
                yield previous
            previous = row
        if previous is None:  # a shard without a sample still ends, with a row that is not a sample
            empty = torch.zeros(self.rows.loader.shape, dtype=torch.uint8)
            previous = row_item(shard, -1, empty, id="", label="", tags="[]")
        yield {**previous, "end": True, "total": count, "end_error": end_error}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for shard in self.shards[worker::workers]:
            yield from self._shard_rows(shard)


class ShardSource:
    """WebDataset shards as store shards, one each (see the module doc)."""

    kind = "shards"
    unit = "samples"
    columns = ("id", "label", "tags", "title")

    def __init__(self, urls: Sequence[str], encoder: Encoder, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.urls = self.names = list(urls)
        self.dim = encoder.embed_dim
        self.video = encoder.kind == "video"
        self.sample_rows = _SampleRows(encoder, max_pixels)
        self.declared = [self._declared(url) for url in self.urls]

    @staticmethod
    def _declared(url: str) -> int | None:
        """The shard's sample count in ``shards.json`` beside a local shard; None where there is none."""
        if "://" in url or url.startswith("pipe:"):
            return None
        count = read_index(Path(url).parent)["counts"].get(input_shard_name(url))
        return None if count is None else int(count)

    def expected_rows(self, shard: int) -> None:
        return None  # known when the shard's reader reaches its end

    def signature(self) -> dict[str, Any]:
        return {"input_kind": self.kind, "shards": self.urls}

    def fingerprints(self) -> list[dict[str, Any] | None]:
        return [input_fingerprint(url) for url in self.urls]

    def prepare(self, output: Path, dtype: str) -> None:
        """Drop the parts of unfinished shards: each is read again from its start."""
        for shard in range(len(self.urls)):
            if not shard_done(output, shard):
                shutil.rmtree(parts_dir(output, shard), ignore_errors=True)  # the shard is read again

    def loader(self, output: Path, world: int, rank: int, batch_size: int, num_workers: int) -> DataLoader:
        pending = [s for s in range(len(self.urls)) if not shard_done(output, s)]
        if len(pending) < len(self.urls):
            log.info("resuming: %d of %d shards already extracted", len(self.urls) - len(pending), len(self.urls))
        shards = pending[rank::world]
        return DataLoader(ShardExtractionDataset(self.urls, shards, self.sample_rows), batch_size=batch_size,
                          num_workers=min(num_workers, len(shards)), pin_memory=torch.cuda.is_available())

    def metadata(self, shard: int, data: dict[str, np.ndarray], good: np.ndarray) -> pa.Table:
        ids = data["id"][good].tolist()
        columns = {
            "id": pa.array(ids, pa.string()),
            "path": pa.array([f"{self.urls[shard]}#{i}" for i in ids], pa.string()),
            "label": pa.array([v or None for v in data["label"][good].tolist()], pa.string()),
            "tags": pa.array([json.loads(t) for t in data["tags"][good].tolist()], pa.list_(pa.string())),
        }
        if self.video:
            columns["title"] = pa.array(data["title"][good].tolist(), pa.string())
        return pa.table(columns)

    def failures(self, shard: int, data: dict[str, np.ndarray], end: dict[str, Any] | None) -> list[dict[str, Any]]:
        url, bad = self.urls[shard], ~data["ok"].astype(bool)
        lines = [{"row": int(p), "id": i or None, "path": url, "error": str(e)}
                 for p, i, e in zip(data["pos"][bad], data["id"][bad], data["error"][bad])]
        if end and end["error"]:
            declared, read = self.declared[shard], int(end["total"])
            missing = declared - read if declared is not None and declared >= read else None
            lines.append({"row": -1, "id": None, "path": url, "error": end["error"], "read": read, "missing": missing})
        return lines

    def manifest(self) -> dict[str, Any]:
        first, last = self.urls[0], self.urls[-1]
        return {"input": first if len(self.urls) == 1 else f"{first} .. {last}", "input_kind": self.kind,
                "shards": len(self.urls)}
