"""The export folder on disk: ``export.json`` (its manifest), the part files it names, the per-item hash table.

Everything that reads, verifies, replaces or deletes an export's files lives here, so the rules of what a manifest
may name (only the export's own plain file names, directly inside the folder) are written once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmpretrain._io import atomic_path, sha256_file
from mmpretrain.recsys.formats import read_part
from mmpretrain.recsys.projection import JSON_FILE, NPZ_FILE
from mmpretrain.recsys.validation import FeatureError

EXPORT_FILE, CONFIG_FILE = "export.json", "features.config"
FORMAT_NAME, FORMAT_VERSION = "mmpretrain.recsys-export", 1
# the only file names a manifest may name (so a tampered export.json cannot make a run touch other files)
_OWN_FILE_RE = re.compile(r"^(?:features-\d{5,}\.(?:parquet|csv|npy|ids\.txt)|items-\d{5,}\.parquet|i2i\.[a-z]+)$")


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The export's ``export.json``, or None where the folder holds no export."""
    path = out / EXPORT_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FeatureError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME \
            or manifest.get("version", 0) > FORMAT_VERSION:
        shown = (manifest.get("format"), manifest.get("version")) if isinstance(manifest, dict) else manifest
        raise FeatureError(f"{path} is not an export this version reads ({shown!r})")
    for key, name in _named_files(manifest, path):
        _confined(out, name, f"{path}: {key}")
    return manifest


def _named_files(manifest: dict[str, Any], path: Path) -> Iterator[tuple[str, Any]]:
    """Every (key, file name) an ``export.json`` names, which the export may later read, replace or delete."""
    try:
        for i, part in enumerate(manifest["parts"]):
            for key in ("file", "ids_file"):
                if key in part:
                    yield f"parts[{i}].{key}", part[key]
        yield "items", manifest["items"]
        if manifest.get("i2i"):
            yield "i2i.path", Path(manifest["i2i"]["path"]).name
    except (KeyError, TypeError) as exc:
        raise FeatureError(f"{path}: malformed export manifest ({type(exc).__name__}: {exc})") from exc


def _confined(out: Path, name: Any, where: str) -> None:
    """A file name from ``export.json`` must be one of the export's own plain names, directly inside ``out``."""
    if not isinstance(name, str) or not _OWN_FILE_RE.match(name) or (out / name).is_symlink():
        raise FeatureError(f"{where} = {name!r} is not a file this export writes inside {out}; refusing to touch it")


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Commit point of a run: atomically replace ``export.json``."""
    with atomic_path(out / EXPORT_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def part_files(part: dict[str, Any]) -> list[str]:
    """The files of one part entry."""
    return [part["file"], *([part["ids_file"]] if "ids_file" in part else [])]


def _export_files(manifest: dict[str, Any]) -> list[str]:
    """Every file an export's manifest names."""
    files = [name for part in manifest["parts"] for name in part_files(part)]
    files += [manifest["items"], CONFIG_FILE, NPZ_FILE, JSON_FILE]
    if manifest.get("i2i"):
        files.append(Path(manifest["i2i"]["path"]).name)
    return files


def remove_export(out: Path, manifest: dict[str, Any]) -> None:
    """Delete an export (manifest first, so a crash never leaves a manifest naming missing files)."""
    (out / EXPORT_FILE).unlink()
    for name in _export_files(manifest):
        (out / name).unlink(missing_ok=True)


def verify_part(out: Path, part: dict[str, Any]) -> None:
    """Refuse a part file that is missing or differs from the sha256 recorded when it was written."""
    for key in ("file", "ids_file"):
        if key not in part:
            continue
        path = out / part[key]
        if not path.is_file():
            raise FeatureError(f"export {out}: {part[key]} listed in {EXPORT_FILE} is missing")
        if sha256_file(path) != part[key.replace("file", "sha256")]:
            raise FeatureError(f"export {out}: {part[key]} was altered (sha256 differs from {EXPORT_FILE})")


def part_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`read_part`/:func:`write_part` from an export's settings."""
    keys = ("id_column", "feature_name", "separator", "delimiter")
    return {key: settings[key] for key in keys if key in settings}


def read_features(output: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All items of an export as ``(ids, float32 (n, dim))``, in part order, each part checked against its sha256."""
    out = Path(output)
    manifest = read_manifest(out)
    if manifest is None:
        raise FeatureError(f"{out} holds no export ({EXPORT_FILE} is missing)")
    ids_parts, value_parts = [], []
    for part in manifest["parts"]:
        if verify:
            verify_part(out, part)
        ids, values = read_part(out / part["file"], manifest["settings"]["format"], dim=manifest["dim"],
                                **part_settings(manifest["settings"]))
        ids_parts.append(ids)
        value_parts.append(values)
    if not ids_parts:
        return np.empty(0, dtype=str), np.empty((0, manifest["dim"]), dtype=np.float32)
    return np.concatenate(ids_parts), np.concatenate(value_parts)




def read_items(out: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``item_id -> (content_hash, part file)`` of an earlier export."""
    table = pq.read_table(out / manifest["items"])
    return dict(zip(table.column("item_id").to_pylist(),
                    zip(table.column("content_hash").to_pylist(), table.column("part").to_pylist())))


def write_items(out: Path, name: str, items: dict[str, tuple[str, str]]) -> None:
    """The per-item hash table, atomically."""
    table = pa.table({"item_id": pa.array(list(items), type=pa.string()),
                      "content_hash": pa.array([h for h, _ in items.values()], type=pa.string()),
                      "part": pa.array([p for _, p in items.values()], type=pa.string())})
    with atomic_path(out / name) as tmp:
        pq.write_table(table, tmp)
