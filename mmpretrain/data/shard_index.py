"""``shards.json``: the sample counts and vocabularies written next to WebDataset shards, checked before use.

The file is written by `write_shards` (``mmpretrain-shards``) and read by every shard reader, which plans epochs from
its counts. Being a file anyone can edit or leave stale, it is validated like any input: each count a non-negative
integer no larger than `MAX_SHARD_SAMPLES`, ``classes`` and ``tags`` lists of strings; an error names
``<folder>/shards.json`` and the key.

Layout::

    {"counts": {"shard-000000.tar": 1000, ...}, "classes": ["cat", "dog"], "tags": ["indoor", ...]}

(the earlier layout, a bare ``{shard: count}`` mapping, reads as its counts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmpretrain._io import write_text_atomic
from mmpretrain.errors import DataError

INDEX_FILE = "shards.json"
#: the largest sample count a shard may claim: a tar of 10^8 samples is already far past any sane shard size
MAX_SHARD_SAMPLES = 100_000_000


def shard_name(url: str) -> str:
    """What a shard is called in ``shards.json`` and in sample names: its file name."""
    return url.rstrip("/").rsplit("/", 1)[-1].split()[-1]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SHARD_SAMPLES:
        raise DataError(f"{where} = {value!r}: a sample count must be an integer from 0 to {MAX_SHARD_SAMPLES} "
                        f"(rewrite the file with mmpretrain-shards ... --overwrite, or fix the value)")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where} = {str(value)[:80]}: must be a list of strings")
    return value


def read_index(folder: str | os.PathLike) -> dict[str, Any]:
    """A folder's ``shards.json`` as ``{"counts": {...}, "classes": [...], "tags": [...]}``, validated
    (``{"counts": {}}`` when there is none).

    Raises:
        DataError: the file is not JSON, not an object, or a count, ``classes`` or ``tags`` is malformed; the message
            names ``<folder>/shards.json`` and the key.
    """
    index = Path(folder) / INDEX_FILE
    if not index.is_file():
        return {"counts": {}}
    try:
        data = json.loads(index.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise DataError(f"{index}: not valid JSON ({err}); rewrite it with mmpretrain-shards") from None
    if not isinstance(data, dict):
        raise DataError(f"{index}: must be a JSON object with 'counts', got {type(data).__name__}")
    if "counts" not in data:
        data = {"counts": data}
    if not isinstance(data["counts"], dict):
        raise DataError(f"{index}: key 'counts' must map shard file names to sample counts, got "
                        f"{type(data['counts']).__name__}")
    counts = {str(k): _count(v, f"{index}: counts[{k!r}]") for k, v in data["counts"].items()}
    out: dict[str, Any] = {**data, "counts": counts}
    for field in ("classes", "tags"):
        if field in data:
            out[field] = _strings(data[field], f"{index}: key {field!r}")
    return out


def write_index(folder: str | os.PathLike, index: dict[str, Any]) -> None:
    """Write ``shards.json`` atomically (readers never see a half-written index)."""
    write_text_atomic(Path(folder) / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")
