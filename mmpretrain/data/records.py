"""One reader for the record files users write by hand and by script: JSON Lines, JSON arrays and CSV.

Image manifests, video manifests and shard conversion lists all come in these forms; reading them in one place keeps
the line numbers in error messages, the CSV list cells and the blank-line rules the same everywhere.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmpretrain.errors import DataError

__all__ = ["RECORD_SUFFIXES", "csv_list", "read_records"]

RECORD_SUFFIXES = (".jsonl", ".json", ".csv")


def csv_list(cell: str, key: str, where: str) -> list[Any]:
    """A CSV cell holding a list: a JSON list (``["a", "b"]``) or ``|``-separated text (``a|b``)."""
    cell = cell.strip()
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: '{key}' looks like a JSON list but is not ({err.msg})") from None
    return [part.strip() for part in cell.split("|") if part.strip()]


def _csv_records(path: Path, required: str | None, list_columns: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if required is not None and (reader.fieldnames is None or required not in reader.fieldnames):
            raise DataError(f"{path}:1: the CSV header has no '{required}' column (got {reader.fieldnames})")
        for row in reader:
            line = reader.line_num  # the row's last line; rows span one line unless a quoted cell holds a newline
            record = {k: v for k, v in row.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}
            if not record:
                continue
            for key in list_columns:
                if key in record:
                    record[key] = csv_list(record[key], key, f"{path}:{line}")
            yield line, record


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line}: expected one JSON object per line, got {type(record).__name__}")
            yield line, record


def _json_array(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: item {index} of the JSON array is a {type(record).__name__}, not an object")
        yield index, record


def _starts_with_bracket(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped.startswith("[")
    return False


def read_records(
    path: str | Path, required: str | None = None, list_columns: Sequence[str] = ()
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, record)`` pairs of a ``.jsonl``, ``.json`` or ``.csv`` file, streamed; blank lines are skipped.

    ``.jsonl`` is one object per line; ``.json`` is a JSON array of objects, or JSON Lines when it does not start
    with ``[``; CSV cells that are empty are left out, and ``list_columns`` cells are parsed by :func:`csv_list`.
    JSON Lines and CSV are read a line at a time, so a caller that stops early does not read a file of millions of
    rows; the line (or array item) numbers go into every error.

    Raises:
        DataError: invalid JSON, a record that is not an object, a CSV header without ``required``, or another
            suffix, naming the file and line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_records(path, required, list_columns)
    elif suffix == ".json" and _starts_with_bracket(path):
        yield from _json_array(path)
    elif suffix in (".jsonl", ".json"):
        yield from _json_lines(path)
    else:
        raise DataError(f"{path}: unknown record format '{suffix}'; use .jsonl, .json or .csv")
