"""What a row source tells the one pipeline: its store shards, its work, and how its rows become store rows.

Two sources exist: :class:`~mmpretrain.extraction.inputs.InputSource` (a folder, file list or manifest, cut into
fixed chunks) and :class:`~mmpretrain.extraction.shards.ShardSource` (WebDataset shards, one store shard each).
Their datasets yield the same item (:func:`row_item`), so one writer, one run folder and one resume check serve both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

__all__ = ["RowSource", "row_item"]


def row_item(shard: int, pos: int, pixels: torch.Tensor, error: str = "", title: str = "", ocr: str = "",
             **columns: str) -> dict[str, Any]:
    """One row as every extraction dataset yields it: not the last of an input shard (see the writer module)."""
    return {"shard": shard, "pos": pos, "pixels": pixels, "error": error, "title": title, "ocr": ocr,
            "end": False, "total": -1, "end_error": "", **columns}


class RowSource(Protocol):
    """Rows to embed, grouped into store shards (``names[i]`` says where store shard ``i`` comes from)."""

    kind: str  # recorded as the store's input_kind
    unit: str  # what a row is, in messages: "inputs", "samples"
    names: list[str]
    columns: tuple[str, ...]  # string columns its items carry to the writer besides the common ones
    dim: int

    def expected_rows(self, shard: int) -> int | None:
        """Rows of store shard ``shard`` when known up front; None when its input's end tells."""

    def signature(self) -> dict[str, Any]:
        """The input's part of the resume signature."""

    def fingerprints(self) -> list[Any]:
        """Per store shard, what tells that its input changed since it was extracted (None where nothing can)."""

    def prepare(self, output: Path, dtype: str) -> None:
        """Tidy what an earlier run left (global rank 0, before any rank reads)."""

    def loader(self, output: Path, world: int, rank: int, batch_size: int, num_workers: int) -> DataLoader:
        """This rank's rows still to do."""

    def metadata(self, shard: int, data: dict[str, np.ndarray], good: np.ndarray) -> pa.Table:
        """The store metadata of the rows of ``data`` (one store shard, in order) that ``good`` marks."""

    def failures(self, shard: int, data: dict[str, np.ndarray], end: dict[str, Any] | None) -> list[dict[str, Any]]:
        """``failed.jsonl`` lines of one store shard: its failed rows, and its input's early end, if any."""

    def manifest(self) -> dict[str, Any]:
        """What the store's manifest records about the input."""
