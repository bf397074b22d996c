"""Video manifests: one video a line with its title, OCR text, label and tags (JSON Lines, CSV also read).

```
{"id": "v1", "video": "clips/v1.mp4", "title": "a red circle moving left", "ocr": ["PROMO 42"],
 "label": "circle", "tags": ["red", "circle", "moving-left"]}
```
Only `video` is required; relative paths resolve against the manifest's folder, so a manifest and its videos
move together. In CSV, `ocr` and `tags` cells hold a JSON list or `|`-separated text. Every error names the
file and line, since manifests are written by hand and by scripts alike.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain._io import write_text_atomic
from mmpretrain.data.records import RECORD_SUFFIXES, read_records
from mmpretrain.data.sources import InputRows
from mmpretrain.errors import ConfigError, DataError, MissingPathError

FIELDS = ("id", "video", "title", "ocr", "label", "tags")


@dataclass(frozen=True)
class VideoRecord:
    """One manifest line, validated; `video` is absolute and `line` is where it came from (for error messages)."""

    id: str
    video: str
    title: str | None
    ocr: tuple[str, ...]
    label: str | None
    tags: tuple[str, ...]
    line: int


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _text(value: Any, key: str, where: str, allow_int: bool = False) -> str | None:
    if value is None:
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        kind = "a string or an integer" if allow_int else "a string"
        raise DataError(f"{where}: '{key}' must be {kind}, got {type(value).__name__} {value!r}")
    return value


def _strings(value: Any, key: str, where: str, allow_str: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) and allow_str:
        return (value,) if value.strip() else ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        kind = "a string or a list of strings" if allow_str else "a list of strings"
        raise DataError(f"{where}: '{key}' must be {kind}, got {value!r}")
    return tuple(v for v in value if v.strip())


def _default_id(video: str, resolved: Path, root: Path) -> str:
    if not os.path.isabs(video):
        return Path(os.path.normpath(video)).as_posix()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return resolved.stem


def _record(entry: Mapping[str, Any], path: Path, line: int) -> VideoRecord:
    where = _where(path, line)
    video = entry.get("video")
    if video is None or video == "":
        raise DataError(f"{where}: missing the required key 'video'")
    if not isinstance(video, str):
        raise DataError(f"{where}: 'video' must be a string path, got {type(video).__name__} {video!r}")
    root = path.parent.resolve()
    resolved = (root / video).resolve()
    vid = _text(entry.get("id"), "id", where, allow_int=True) or _default_id(video, resolved, root)
    return VideoRecord(
        id=vid,
        video=str(resolved),
        title=_text(entry.get("title"), "title", where),
        ocr=_strings(entry.get("ocr"), "ocr", where, allow_str=True),
        label=_text(entry.get("label"), "label", where, allow_int=True),
        tags=_strings(entry.get("tags"), "tags", where, allow_str=False),
        line=line,
    )


def read_video_manifest(path: str | Path) -> list[VideoRecord]:
    """Read and validate a `.jsonl`/`.json` (JSON Lines) or `.csv` manifest; blank lines are skipped.

    Raises:
        MissingPathError: no such manifest.
        DataError: bad JSON, a missing `video`, a wrong type, a duplicate id or no videos, naming file:line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"video manifest {path} does not exist")
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise DataError(f"{path}: unknown manifest format '{path.suffix}'; use .jsonl, .json or .csv")
    records: list[VideoRecord] = []
    first_line: dict[str, int] = {}
    for line, entry in read_records(path, required="video", list_columns=("ocr", "tags")):
        record = _record(entry, path, line)
        if record.id in first_line:
            raise DataError(
                f"{_where(path, line)}: duplicate id '{record.id}' (first on line {first_line[record.id]})"
            )
        first_line[record.id] = line
        records.append(record)
    if not records:
        raise DataError(f"{path}: the manifest lists no videos")
    return records


def _entry(item: VideoRecord | Mapping[str, Any], root: Path) -> dict[str, Any]:
    if isinstance(item, VideoRecord):
        video = Path(item.video)
        try:
            rel = video.relative_to(root).as_posix()
        except ValueError:
            rel = str(video)
        entry = {
            "id": item.id,
            "video": rel,
            "title": item.title,
            "ocr": list(item.ocr) or None,
            "label": item.label,
            "tags": list(item.tags) or None,
        }
    else:
        entry = dict(item)
        if not entry.get("video"):
            raise ValueError(f"every manifest entry needs a 'video', got {entry!r}")
    return {k: v for k, v in entry.items() if v is not None}


def write_video_manifest(items: Iterable[VideoRecord | Mapping[str, Any]], path: str | Path) -> Path:
    """Write records (paths made relative to the manifest's folder when under it) or dicts as JSON Lines, or CSV
    for a `.csv` path (lists as JSON), atomically so a reader never sees half a manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    entries = [_entry(item, root) for item in items]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        columns = list(FIELDS) + sorted({k for e in entries for k in e} - set(FIELDS))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for e in entries:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in e.items()})
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_text_atomic(path, text)
    return path


def label_vocab(records: Sequence[VideoRecord]) -> list[str]:
    """Sorted distinct labels (records without one are left out); index = class id."""
    return sorted({r.label for r in records if r.label is not None})


def tag_vocab(records: Sequence[VideoRecord]) -> list[str]:
    """Sorted distinct tags; index = position in the multi-hot vector."""
    return sorted({t for r in records for t in r.tags})


def video_input(path: Path, labels: str | bool, key: str) -> InputRows:
    """A video manifest as extraction rows (``video`` with optional ``id``, ``title``, ``ocr``, ``label``, ``tags``).

    ``labels`` as :func:`mmpretrain.data.read_image_input` takes it; ``key`` is the config key named in errors.
    """
    from mmpretrain.video.train.text import join_ocr

    records = read_video_manifest(path)
    names = [r.label for r in records]
    given = [n for n in names if n is not None]
    if labels is True and not given:
        raise ConfigError(f"{key}={path}: labels=true but no record has a 'label'")
    if labels is True and len(given) != len(names):  # extraction stores the labels there are (null elsewhere)
        raise ConfigError(f"{key}={path}: labels=true but only {len(given)} of {len(names)} records have a label")
    return InputRows(
        root=path.parent,
        kind="video manifest",
        paths=[r.video for r in records],
        ids=[r.id for r in records],
        labels=names if given and labels is not False else None,
        tags=[list(r.tags) for r in records] if any(r.tags for r in records) else None,
        titles=[r.title or "" for r in records],
        ocr=[join_ocr(list(r.ocr)) for r in records],
    )
