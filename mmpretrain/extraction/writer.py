"""The one writer: every batch goes to part files of its store shard; a shard whose rows are all there is merged.

Both row sources (files and shards) hand it the same batch: ``shard`` and ``pos`` (the row's store shard and its
place there), ``error`` (empty for a row that decoded), the source's own string columns, and ``end`` / ``total`` /
``end_error`` on the last row of an input shard (how many samples it gave and why it ended early, if it did). A
store shard holds ``expected`` rows, known up front (files) or from its input's end (shards); the merge checks that
the part files hold exactly rows ``0 .. expected - 1`` and writes nothing else.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter

from mmpretrain._io import atomic_path, file_lock, write_text_atomic
from mmpretrain.embeddings import shard_done, write_shard
from mmpretrain.extraction.run import (
    INPUTS_FILE,
    ExtractionError,
    failed_part,
    parts_dir,
    read_json,
    run_dir,
    shard_record,
)

if TYPE_CHECKING:
    from mmpretrain.extraction.sources import RowSource

__all__ = ["StoreWriter", "covered_rows", "merge_ready", "part_files"]

log = logging.getLogger(__name__)

_PART_RE = re.compile(r"^(\d+)-(\d+)-r(\d+)\.npz$")
_END_FILE = "end.json"
_MIN_ROWS_FOR_RATE = 100


def part_files(folder: Path) -> list[Path]:
    """A store shard's part files, in name (row) order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART_RE.match(p.name))


def covered_rows(folder: Path) -> int:
    """Rows the part files hold, from their names (cheap enough to ask after every batch)."""
    return sum(int(_PART_RE.match(p.name).group(2)) for p in part_files(folder))


def _write_part(folder: Path, rank: int, columns: dict[str, np.ndarray]) -> None:
    """One batch's rows of one store shard: ``<first row>-<row count>-r<rank>.npz``, renamed into place complete."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{int(columns['pos'][0]):010d}-{len(columns['pos'])}-r{rank}.npz"
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        np.savez(f, **columns)


def _load_parts(folder: Path) -> dict[str, np.ndarray] | None:
    """Every part's columns, concatenated; None when there are none."""
    parts = []
    for path in part_files(folder):
        with np.load(path, allow_pickle=False) as data:
            parts.append({key: data[key] for key in data.files})
    if not parts:
        return None
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _merge(output: Path, source: RowSource, shard: int, dtype: str) -> bool:
    """Write store shard ``shard`` from its part files if they hold all its rows; False while rows are missing.

    Raises :class:`ExtractionError` when rows can no longer arrive (its input shard has ended) yet some are
    missing, or when part files hold rows the shard does not have: never a store shard with rows left out.
    """
    folder = parts_dir(output, shard)
    end = read_json(folder / _END_FILE)
    expected = source.expected_rows(shard)
    if expected is None:
        if end is None:
            return False
        expected = int(end["total"])
    data = _load_parts(folder) if expected else None
    if data is None:  # an input shard without a sample: an empty store shard, with its columns
        data = {"pos": np.empty(0, np.int64), "ok": np.empty(0, bool), "error": np.empty(0, str),
                "embeddings": np.empty((0, source.dim), np.float32), **{k: np.empty(0, str) for k in source.columns}}
    unique, first = np.unique(data["pos"], return_index=True)  # a row run twice (padding) is kept once
    if len(unique) and (unique[0] < 0 or unique[-1] >= expected):
        raise ExtractionError(f"{folder}: part files hold rows outside store shard {shard} (0 .. {expected - 1})")
    if len(unique) != expected:
        if end is None:
            return False
        raise ExtractionError(f"{folder}: part files hold {len(unique)} of the {expected} rows read from "
                              f"{source.names[shard]}; rerun the same command to extract it again")
    data = {key: value[first] for key, value in data.items()}
    good = data["ok"].astype(bool)
    failures = source.failures(shard, data, end)
    write_text_atomic(failed_part(output, shard), "".join(json.dumps(f) + "\n" for f in failures))
    fingerprints = read_json(run_dir(output) / INPUTS_FILE)
    record = {"input": fingerprints[shard] if fingerprints else None, "complete": not (end and end["error"])}
    write_text_atomic(shard_record(output, shard), json.dumps(record) + "\n")
    write_shard(output, shard, data["embeddings"][good], source.metadata(shard, data, good), dtype=dtype)
    shutil.rmtree(folder, ignore_errors=True)  # a padded duplicate may still land here; the run's end clears it
    log.info("store shard %d (%s) written: %d rows, %d failed", shard, source.names[shard], int(good.sum()),
             len(failures))
    return True


def merge_ready(output: Path, source: RowSource, shard: int, dtype: str) -> None:
    """Merge ``shard`` once its parts name as many rows as it has (under a lock; a no-op if already done)."""
    folder = parts_dir(output, shard)
    expected = source.expected_rows(shard)
    if expected is not None and covered_rows(folder) < expected:
        return
    if expected is None and not (folder / _END_FILE).is_file():
        return
    with file_lock(folder.parent / f"{shard:05d}.lock"):  # two ranks finishing one shard merge it once
        if not shard_done(output, shard):
            _merge(output, source, shard, dtype)


class StoreWriter(BasePredictionWriter):
    """Streams each batch to part files of its store shards and merges each shard as soon as it is complete.

    Also counts this rank's failed rows and aborts past ``max_failure_rate`` once the rank has seen enough rows
    for the rate to mean something; the run's end checks the exact rate over everything.
    """

    def __init__(self, output: Path, source: RowSource, dtype: str, max_failure_rate: float) -> None:
        super().__init__(write_interval="batch")
        self.output, self.source, self.dtype = output, source, dtype
        self.max_failure_rate = max_failure_rate
        self.processed = 0
        self.failed = 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        ok = prediction["ok"]
        embeddings = np.zeros((len(ok), self.source.dim), dtype=np.float32)
        embeddings[ok] = prediction["embeddings"]
        shards, pos = batch["shard"].cpu().numpy(), batch["pos"].cpu().numpy()
        ends, totals = batch["end"].cpu().numpy(), batch["total"].cpu().numpy()
        errors = np.array(batch["error"], dtype=str)
        columns = {key: np.array(batch[key], dtype=str) for key in self.source.columns}
        rows = pos >= 0  # a row at -1 only says that an input shard ended without a sample
        for shard in np.unique(shards):
            sel = shards == shard
            keep = sel & rows
            if keep.any():
                _write_part(parts_dir(self.output, int(shard)), trainer.global_rank, {
                    "pos": pos[keep], "ok": ok[keep], "embeddings": embeddings[keep], "error": errors[keep],
                    **{key: value[keep] for key, value in columns.items()}})
            for i in np.flatnonzero(sel & ends):
                parts_dir(self.output, int(shard)).mkdir(parents=True, exist_ok=True)
                write_text_atomic(parts_dir(self.output, int(shard)) / _END_FILE,
                                  json.dumps({"total": int(totals[i]), "error": str(batch["end_error"][i])}))
            merge_ready(self.output, self.source, int(shard), self.dtype)
        self.processed += int(rows.sum())
        self.failed += int((rows & ~ok).sum())
        if self.processed >= _MIN_ROWS_FOR_RATE and self.failed > self.max_failure_rate * self.processed:
            last = errors[rows & ~ok][-1] if (rows & ~ok).any() else "-"
            raise ExtractionError(
                f"{self.failed} of {self.processed} {self.source.unit} failed on rank {trainer.global_rank}, more "
                f"than max_failure_rate={self.max_failure_rate} (last error: {last}); see the log for the files"
            )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Wait for every rank's parts before the run's end on global rank 0."""
        trainer.strategy.barrier("mmpretrain_extract_parts")
