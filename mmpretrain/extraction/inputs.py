"""Rows from a folder, a file list or a manifest: the input cut into fixed chunks, chunk ``i`` = store shard ``i``.

Chunk ``i`` holds input rows ``[i * shard_size, (i + 1) * shard_size)``, so the store's row order is the input's
whatever the number of processes. Resuming is per row: a finished store shard is skipped without decoding its
files, and rows already in part files are not run again; a finished shard one of whose files was rewritten since
(another size or modification time) is extracted again. A file that fails to decode travels as its row's error, is
left out of the store and listed in ``failed.jsonl``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmpretrain.data.records import RECORD_SUFFIXES
from mmpretrain.data.sources import InputRows, is_video_manifest, parse_labels, read_image_input
from mmpretrain.embeddings import shard_done
from mmpretrain.encoders import InputLoader
from mmpretrain.extraction.run import parts_dir
from mmpretrain.extraction.sources import row_item
from mmpretrain.extraction.writer import merge_ready, part_files

__all__ = ["ExtractionDataset", "InputSource", "read_input"]

log = logging.getLogger(__name__)


def read_input(source: str | os.PathLike, labels: str | bool = "auto", key: str = "input") -> InputRows:
    """Rows to extract from a folder, a file list, an image manifest or a video manifest.

    A manifest whose first record names a ``video`` is a video manifest (``mmpretrain.video.video_input``);
    everything else is read by :func:`mmpretrain.data.read_image_input`, whose ``labels`` and ``key`` this takes.

    Example:
        >>> rows = read_input("images/")  # doctest: +SKIP
        >>> rows.kind, len(rows), rows.ids[0]  # doctest: +SKIP
        ('folder', 48, 'circle/00000.png')
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in RECORD_SUFFIXES and is_video_manifest(path):
        from mmpretrain.video import video_input

        return video_input(path, parse_labels(labels, key), key)
    return read_image_input(path, labels, key)


class ExtractionDataset(Dataset):
    """Rows of an :class:`InputRows`; a file that fails to decode yields its error instead of pixels.

    Unlike the training dataset nothing is re-drawn: every input is its own row, so a failure must travel with the
    row (as a non-empty ``error`` and zero pixels that are never embedded) to be left out and reported.
    """

    def __init__(self, source: InputRows, rows: Sequence[int], loader: InputLoader, shard_size: int) -> None:
        self.paths = source.paths
        self.titles, self.ocr = source.titles, source.ocr
        self.rows = np.asarray(rows, dtype=np.int64)
        self.loader, self.shard_size = loader, shard_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        path = self.paths[row]
        shard, pos = divmod(row, self.shard_size)
        text = {"title": self.titles[row] if self.titles else "", "ocr": self.ocr[row] if self.ocr else ""}
        try:
            pixels = self.loader(path)
        except Exception as err:  # PIL and the video decoders raise many exception types for bad files
            log.warning("cannot decode %s (row %d): %s: %s", path, row, type(err).__name__, err)
            return row_item(shard, pos, torch.zeros(self.loader.shape, dtype=torch.uint8),
                            f"{type(err).__name__}: {err}", **text)
        return row_item(shard, pos, pixels, **text)


class InputSource:
    """A folder, file list or manifest as store shards of ``shard_size`` rows (see the module doc)."""

    columns: tuple[str, ...] = ()
    unit = "inputs"

    def __init__(self, rows: InputRows, shard_size: int, loader: InputLoader, dim: int) -> None:
        self.rows, self.shard_size, self.input_loader, self.dim = rows, shard_size, loader, dim
        self.kind = rows.kind
        count = -(-len(rows) // shard_size)
        self.names = [f"rows {lo}..{min(lo + shard_size, len(rows)) - 1} of {rows.root}"
                      for lo in range(0, count * shard_size, shard_size)]

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.rows))

    def expected_rows(self, shard: int) -> int:
        lo, hi = self._bounds(shard)
        return hi - lo

    def signature(self) -> dict[str, Any]:
        return {"shard_size": self.shard_size, "count": len(self.rows), "ids_sha256": self.rows.fingerprint()}

    def fingerprints(self) -> list[str]:
        """Per chunk, sha256 over its files' sizes and modification times (a file rewritten in place changes it)."""
        found = []
        for shard in range(len(self.names)):
            digest = hashlib.sha256()
            for path in self.rows.paths[slice(*self._bounds(shard))]:
                try:
                    stat = os.stat(path)
                    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}\n".encode())
                except OSError:
                    digest.update(b"missing\n")
            found.append(digest.hexdigest())
        return found

    def prepare(self, output: Path, dtype: str) -> None:
        """Drop the parts of finished shards and merge those an interrupted run completed but did not merge."""
        for shard in range(len(self.names)):
            if shard_done(output, shard):
                shutil.rmtree(parts_dir(output, shard), ignore_errors=True)
            else:
                merge_ready(output, self, shard, dtype)

    def pending_rows(self, output: Path) -> np.ndarray:
        """Rows not yet in a finished shard nor in a part file: what this run still has to decode and embed."""
        pending = []
        for shard in range(len(self.names)):
            if shard_done(output, shard):
                continue
            lo, hi = self._bounds(shard)
            todo = np.ones(hi - lo, dtype=bool)
            for part in part_files(parts_dir(output, shard)):
                with np.load(part, allow_pickle=False) as data:
                    todo[data["pos"]] = False
            pending.append(np.arange(lo, hi)[todo])
        return np.concatenate(pending) if pending else np.empty(0, dtype=np.int64)

    def loader(self, output: Path, world: int, rank: int, batch_size: int, num_workers: int) -> DataLoader:
        """Every pending row; Lightning's distributed sampler deals them to the ranks."""
        rows = self.pending_rows(output)
        done = len(self.rows) - len(rows)
        if done:
            log.info("resuming: %d of %d rows already extracted; %d to go", done, len(self.rows), len(rows))
        if 0 < len(rows) < world:  # every rank needs a batch; a repeated row is merged once
            rows = np.concatenate([rows, np.full(world - len(rows), rows[-1])])
        return DataLoader(ExtractionDataset(self.rows, rows, self.input_loader, self.shard_size),
                          batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          pin_memory=torch.cuda.is_available())

    def metadata(self, shard: int, data: dict[str, np.ndarray], good: np.ndarray) -> dict[str, list[Any]]:
        return self.rows.metadata(shard * self.shard_size + data["pos"][good])

    def failures(self, shard: int, data: dict[str, np.ndarray], end: dict[str, Any] | None) -> list[dict[str, Any]]:
        bad = ~data["ok"].astype(bool)
        rows = shard * self.shard_size + data["pos"][bad]
        return [{"row": int(r), "id": self.rows.ids[r], "path": self.rows.paths[r], "error": str(e)}
                for r, e in zip(rows, data["error"][bad])]

    def manifest(self) -> dict[str, Any]:
        return {"input": str(self.rows.root), "id_source": str(self.rows.root.resolve()), "input_kind": self.kind,
                "inputs": len(self.rows)}
