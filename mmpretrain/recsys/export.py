"""Recommendation features from an embedding store: project, check, write, append, and the neighbour table.

An export folder holds

- ``features-NNNNN.{parquet,csv,npy}`` parts (npy parts with ``features-NNNNN.ids.txt``), together one row per item,
- ``features.config``: the EasyRec (CSV) or TorchEasyRec (Parquet) feature config matching the parts,
- ``projection.npz`` + ``projection.json`` when the vectors were reduced (see :mod:`mmpretrain.recsys.projection`),
- ``items-NNNNN.parquet``: ``item_id, content_hash, part`` — a hash of each item's source vector, so an
  incremental run writes only items that are new or changed,
- ``i2i.parquet`` or ``i2i.csv``: the item-to-item neighbour table, when asked for,
- ``export.json``: the settings, the projection's fingerprint, the parts with their sha256, the run history.

``export.json`` is written last and names every other file, so a run that dies half-way leaves the previous export
intact: new parts and item tables get fresh numbers, and superseded files are deleted only after the switch.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from mmpretrain._io import atomic_path, sha256_file
from mmpretrain.embeddings import EmbeddingStore, open_store
from mmpretrain.errors import ConfigError
from mmpretrain.recsys.formats import (
    FORMATS,
    SUFFIXES,
    check_separators,
    easyrec_config,
    read_part,
    torcheasyrec_config,
    write_part,
)
from mmpretrain.recsys.neighbours import TABLE_FORMATS, item_to_item
from mmpretrain.recsys.projection import (
    JSON_FILE,
    NPZ_FILE,
    OUTPUT_DTYPES,
    Projection,
    fit_projection,
    load_projection,
    prepare_features,
)
from mmpretrain.recsys.validation import FeatureError, as_matrix, check_finite, check_ids

log = logging.getLogger(__name__)

EXPORT_FILE, CONFIG_FILE = "export.json", "features.config"
FORMAT_NAME, FORMAT_VERSION = "mmpretrain.recsys-export", 1
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Source = str | os.PathLike | EmbeddingStore | np.ndarray | Sequence[np.ndarray]


class _Input:
    """Checked ``(ids, float32 vectors)`` batches from a store (streamed) or from vectors in memory."""

    def __init__(self, source: Source, ids: Sequence[str] | np.ndarray | None, forbidden: str, verify: str) -> None:
        if isinstance(source, (str, os.PathLike)):
            source = open_store(source, verify=verify)
        self.forbidden = forbidden
        if isinstance(source, EmbeddingStore):
            if ids is not None:
                raise ConfigError("ids come from the store's id column; do not pass ids with a store")
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


def _content_hashes(vectors: np.ndarray) -> list[str]:
    """blake2b-128 of each row's float32 bytes: equal hashes mean the source vector did not change."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows]


_DEFAULTS = {"format": "parquet", "feature_name": "item_emb", "id_column": "item_id", "dtype": "float32",
             "normalize": True, "separator": ",", "delimiter": "\t"}


def _settings(requested: dict[str, Any], out: Path, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The settings that decide the bytes of every part: given ones, else the earlier export's, else defaults.

    An append must keep the earlier export's settings, so a given one that differs is refused, naming it.
    """
    given = {key: value for key, value in requested.items() if value is not None}
    earlier = previous["settings"] if previous is not None else {}
    merged = {**_DEFAULTS, **earlier, **given}
    fmt, dtype = merged["format"], merged["dtype"]
    if fmt not in FORMATS:
        raise FeatureError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in OUTPUT_DTYPES:
        raise FeatureError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    for key in ("feature_name", "id_column"):
        if not _NAME_RE.match(merged[key]):
            raise FeatureError(f"{key}={merged[key]!r} must be a column name of letters, digits and '_'")
    if merged["feature_name"] == merged["id_column"]:
        raise FeatureError(f"feature_name and id_column must differ, both are {merged['feature_name']!r}")
    keys = ["format", "feature_name", "id_column", "dtype", "normalize"]
    if fmt == "easyrec":
        check_separators(merged["separator"], merged["delimiter"])
        keys += ["separator", "delimiter"]
    settings = {key: merged[key] for key in keys}
    settings["normalize"] = bool(settings["normalize"])
    for key, value in earlier.items():
        if settings.get(key) != value:
            raise FeatureError(f"cannot append to {out}: it was written with {key}={value!r}, this run asks for "
                               f"{key}={settings.get(key)!r}")
    return settings


def _read_manifest(out: Path) -> dict[str, Any] | None:
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


_OWN_FILE_RE = re.compile(r"^(?:features-\d{5,}\.(?:parquet|csv|npy|ids\.txt)|items-\d{5,}\.parquet|i2i\.[a-z]+)$")


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


def _check_same_source(out: Path, previous: dict[str, Any] | None, data: _Input, allow: bool) -> None:
    """Store ids are relative to the folder they were extracted from: appending another folder's store would match
    ``circle/00.png`` of train against ``circle/00.png`` of val and silently replace it."""
    if previous is None or data.store is None or allow:
        return
    earlier = next((run.get("id_source") for run in reversed(previous.get("runs", [])) if run.get("id_source")), None)
    current = data.id_source
    if earlier is not None and current != earlier:
        raise FeatureError(f"cannot append store {data.name} to {out}: its ids are relative to {current!r}, the "
                           f"export's to {earlier!r}; pass allow_other_source=true if they name the same items")


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Commit point of a run: atomically replace ``export.json``."""
    with atomic_path(out / EXPORT_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")


def _part_files(part: dict[str, Any]) -> list[str]:
    """The files of one part entry."""
    return [part["file"], *([part["ids_file"]] if "ids_file" in part else [])]


def _export_files(manifest: dict[str, Any]) -> list[str]:
    """Every file an export's manifest names."""
    files = [name for part in manifest["parts"] for name in _part_files(part)]
    files += [manifest["items"], CONFIG_FILE, NPZ_FILE, JSON_FILE]
    if manifest.get("i2i"):
        files.append(Path(manifest["i2i"]["path"]).name)
    return files


def _remove_export(out: Path, manifest: dict[str, Any]) -> None:
    """Delete an export (manifest first, so a crash never leaves a manifest naming missing files)."""
    (out / EXPORT_FILE).unlink()
    for name in _export_files(manifest):
        (out / name).unlink(missing_ok=True)


def _verify_part(out: Path, part: dict[str, Any]) -> None:
    """Refuse a part file that is missing or differs from the sha256 recorded when it was written."""
    for key in ("file", "ids_file"):
        if key not in part:
            continue
        path = out / part[key]
        if not path.is_file():
            raise FeatureError(f"export {out}: {part[key]} listed in {EXPORT_FILE} is missing")
        if sha256_file(path) != part[key.replace("file", "sha256")]:
            raise FeatureError(f"export {out}: {part[key]} was altered (sha256 differs from {EXPORT_FILE})")


def _read_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`read_part`/:func:`write_part` from an export's settings."""
    keys = ("id_column", "feature_name", "separator", "delimiter")
    return {key: settings[key] for key in keys if key in settings}


def read_features(output: str | os.PathLike, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All items of an export as ``(ids, float32 (n, dim))``, in part order, each part checked against its sha256."""
    out = Path(output)
    manifest = _read_manifest(out)
    if manifest is None:
        raise FeatureError(f"{out} holds no export ({EXPORT_FILE} is missing)")
    ids_parts, value_parts = [], []
    for part in manifest["parts"]:
        if verify:
            _verify_part(out, part)
        ids, values = read_part(out / part["file"], manifest["settings"]["format"], dim=manifest["dim"],
                                **_read_settings(manifest["settings"]))
        ids_parts.append(ids)
        value_parts.append(values)
    if not ids_parts:
        return np.empty(0, dtype=str), np.empty((0, manifest["dim"]), dtype=np.float32)
    return np.concatenate(ids_parts), np.concatenate(value_parts)


def _check_request(saved: Projection | None, dim: int | None, whiten: bool | None, where: str) -> None:
    """Refuse ``dim``/``whiten`` that disagree with the projection an export or file already fixes."""
    have_dim = None if saved is None else saved.output_dim
    have_whiten = False if saved is None else saved.whiten
    described = "no projection" if saved is None else f"a {saved.kind} projection to {saved.output_dim} dims " \
                                                       f"(fingerprint {saved.fingerprint[:12]})"
    if dim is not None and dim != have_dim:
        raise FeatureError(f"{where} has {described}; this run asks for dim={dim}")
    if whiten is not None and bool(whiten) != have_whiten:
        raise FeatureError(f"{where} has {described}; this run asks for whiten={whiten}")


def _resolve_projection(
    out: Path, previous: dict[str, Any] | None, data: _Input, dim: int | None, whiten: bool | None,
    projection: str | os.PathLike | Projection | None, fit_sample: int, eps: float, seed: int,
) -> Projection | None:
    """The projection of this run: the export's saved one when appending, a given one, or a fresh fit."""
    given = load_projection(projection) if isinstance(projection, (str, os.PathLike)) else projection
    given_name = f"projection {projection}" if isinstance(projection, (str, os.PathLike)) else "the given projection"
    if previous is not None:
        meta = previous["projection"]
        saved = load_projection(out) if meta is not None else None
        if saved is not None and saved.fingerprint != meta["fingerprint"]:
            raise FeatureError(f"export {out}: {JSON_FILE} has fingerprint {saved.fingerprint} but {EXPORT_FILE} "
                               f"records {meta['fingerprint']}; the projection files were replaced")
        if given is not None and (saved is None or given.fingerprint != saved.fingerprint):
            have = "no projection" if saved is None else f"projection {out / JSON_FILE} (fingerprint " \
                                                         f"{saved.fingerprint[:12]})"
            raise FeatureError(f"cannot append to {out} with {given_name} (fingerprint {given.fingerprint[:12]}): "
                               f"the export was written with {have}")
        _check_request(saved, dim, whiten, f"export {out}")
        return saved
    if given is not None:
        _check_request(given, dim, whiten, given_name)
        return given
    if dim is None and not whiten:
        return None
    log.info("fitting %s on %d of %d items", "PCA-whitening" if whiten else "PCA", min(fit_sample, data.count),
             data.count)
    return fit_projection(data.sample(fit_sample, seed), dim or data.dim, bool(whiten), eps)


def _check_input_dim(data: _Input, previous: dict[str, Any] | None, projection: Projection | None) -> None:
    """Refuse vectors whose width differs from what the projection (or the earlier export) reads, naming an item."""
    expected = projection.input_dim if projection is not None else (previous or {}).get("input_dim", data.dim)
    if data.dim != expected:
        reader = "the projection" if projection is not None else "the earlier export"
        raise FeatureError(f"item {data.first_id()!r}: vector has {data.dim} values but {reader} expects {expected}")


class _PartWriter:
    """Buffers exported rows and writes them as numbered parts of at most ``part_size`` rows."""

    def __init__(self, out: Path, settings: dict[str, Any], next_part: int, part_size: int) -> None:
        self.out, self.settings, self.next_part, self.part_size = out, settings, next_part, part_size
        self.ids: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.buffered = 0
        self.parts: list[dict[str, Any]] = []
        self.part_of: dict[str, str] = {}

    def add(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Queue rows; full parts are written at once."""
        self.ids.append(ids)
        self.values.append(values)
        self.buffered += len(ids)
        while self.buffered >= self.part_size:
            self._flush(self.part_size)

    def close(self) -> list[dict[str, Any]]:
        """Write what is left; returns the manifest entries of every part written."""
        if self.buffered:
            self._flush(self.buffered)
        return self.parts

    def _flush(self, size: int) -> None:
        ids, values = np.concatenate(self.ids), np.concatenate(self.values)
        self.ids, self.values, self.buffered = [ids[size:]], [values[size:]], len(ids) - size
        ids, values = ids[:size], values[:size]
        name = f"features-{self.next_part:05d}{SUFFIXES[self.settings['format']]}"
        self.next_part += 1
        files = write_part(self.out / name, self.settings["format"], ids, values, **_read_settings(self.settings))
        entry: dict[str, Any] = {"file": name, "count": len(ids), "sha256": sha256_file(files[0])}
        if len(files) > 1:
            entry.update(ids_file=files[1].name, ids_sha256=sha256_file(files[1]))
        self.parts.append(entry)
        self.part_of.update(dict.fromkeys(ids.tolist(), name))


def _read_items(out: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``item_id -> (content_hash, part file)`` of an earlier export."""
    table = pq.read_table(out / manifest["items"])
    return dict(zip(table.column("item_id").to_pylist(),
                    zip(table.column("content_hash").to_pylist(), table.column("part").to_pylist())))


def _write_items(out: Path, name: str, items: dict[str, tuple[str, str]]) -> None:
    """The per-item hash table, atomically."""
    table = pa.table({"item_id": pa.array(list(items), type=pa.string()),
                      "content_hash": pa.array([h for h, _ in items.values()], type=pa.string()),
                      "part": pa.array([p for _, p in items.values()], type=pa.string())})
    with atomic_path(out / name) as tmp:
        pq.write_table(table, tmp)


def _i2i_request(previous: dict[str, Any] | None, k: int | None, threshold: float | None, fmt: str,
                 index_key: str, target_recall: float | None) -> dict[str, Any] | None:
    """This run's neighbour-table settings: as given, inherited from the earlier export when ``k`` is None."""
    if k is None:
        earlier = (previous or {}).get("i2i")
        return earlier["request"] if earlier else None
    if k < 0:
        raise FeatureError(f"i2i_k must be >= 0, got {k}")
    if fmt not in TABLE_FORMATS:
        raise FeatureError(f"i2i_format must be one of {TABLE_FORMATS}, got {fmt!r}")
    if k == 0:
        return None
    return {"k": k, "threshold": threshold, "format": fmt, "index_key": index_key, "target_recall": target_recall}


def _stream(
    data: _Input, known: dict[str, tuple[str, str]], proj: Projection | None, settings: dict[str, Any],
    writer: _PartWriter, batch_size: int, progress: bool,
) -> tuple[dict[str, str], set[str]]:
    """Hash every input item and export those that are new or changed; returns all hashes and the changed ids."""
    hashes: dict[str, str] = {}
    changed: set[str] = set()
    with tqdm(total=data.count, desc="export", unit="item", disable=not progress) as bar:
        for batch_ids, batch in data.batches(batch_size):
            selected = []
            for row, (item, digest) in enumerate(zip(batch_ids.tolist(), _content_hashes(batch))):
                if item in hashes:
                    raise FeatureError(f"item {item!r}: id appears more than once in {data.name}")
                hashes[item] = digest
                if item not in known or known[item][0] != digest:
                    selected.append(row)
                    if item in known:
                        changed.add(item)
            if selected:
                rows = np.asarray(selected)
                values = prepare_features(batch[rows], proj, settings["normalize"], settings["dtype"])
                check_finite(values, batch_ids[rows], what=f"exported {settings['dtype']} vector")
                writer.add(batch_ids[rows], values)
            bar.update(len(batch_ids))
    return hashes, changed


def _rewrite_stale(
    out: Path, parts: list[dict[str, Any]], changed: set[str], known: dict[str, tuple[str, str]],
    settings: dict[str, Any], dim: int, writer: _PartWriter,
) -> list[dict[str, Any]]:
    """Rewrite the parts holding changed items without them (under new numbers), so each item keeps one row.

    Returns the parts that stay as they are; the rewritten ones are in ``writer``.
    """
    stale = {known[item][1] for item in changed}
    for part in parts:
        if part["file"] in stale:
            _verify_part(out, part)
            old_ids, old_values = read_part(out / part["file"], settings["format"], dim=dim,
                                            **_read_settings(settings))
            keep = ~np.isin(old_ids, list(changed))
            writer.add(old_ids[keep], old_values[keep].astype(settings["dtype"]))
    return [part for part in parts if part["file"] not in stale]


def _write_config(out: Path, settings: dict[str, Any], dim: int) -> str | None:
    """The feature config beside the parts (EasyRec for CSV, TorchEasyRec for Parquet; npy has none)."""
    if settings["format"] == "npy":
        return None
    if settings["format"] == "easyrec":
        text = easyrec_config(settings["feature_name"], dim, settings["separator"], settings["delimiter"],
                              settings["id_column"])
    else:
        text = torcheasyrec_config(settings["feature_name"], dim)
    with atomic_path(out / CONFIG_FILE) as tmp:
        tmp.write_text(text)
    return str(out / CONFIG_FILE)


def export_features(
    source: Source,
    output: str | os.PathLike,
    *,
    ids: Sequence[str] | np.ndarray | None = None,
    format: str | None = None,
    dim: int | None = None,
    whiten: bool | None = None,
    projection: str | os.PathLike | Projection | None = None,
    dtype: str | None = None,
    normalize: bool | None = None,
    feature_name: str | None = None,
    id_column: str | None = None,
    separator: str | None = None,
    delimiter: str | None = None,
    incremental: bool = False,
    overwrite: bool = False,
    allow_other_source: bool = False,
    fit_sample: int = 100_000,
    eps: float = 1e-6,
    seed: int = 0,
    batch_size: int = 65_536,
    part_size: int = 262_144,
    i2i_k: int | None = None,
    i2i_threshold: float | None = None,
    i2i_format: str = "parquet",
    i2i_index_key: str = "auto",
    i2i_target_recall: float | None = 0.95,
    verify: str = "full",
    progress: bool = False,
) -> dict[str, Any]:
    """Write recommendation features (and optionally the item-to-item table) for a store or in-memory vectors.

    Settings left as None take the earlier export's value when appending, else the default shown; a given setting
    that differs from the earlier export's is refused, since one export must read the same throughout.

    Args:
        source: an embedding store (path or open store), a ``(n, d)`` array, or a sequence of 1-D vectors.
        output: the export folder.
        ids: one id per vector (arrays only; a store brings its own).
        format: ``"parquet"`` (default: ``item_id`` + ``list<float32>``, TorchEasyRec), ``"easyrec"`` (CSV with
            the vector as one string column, plus ``features.config``) or ``"npy"`` (matrix + ids, TorchRec dense).
        dim: PCA width; default: the input width, no projection.
        whiten: PCA-whitening (unit variance per axis; default False).
        projection: a saved projection (path or object) to apply instead of fitting one.
        dtype: ``"float32"`` (default) or ``"float16"`` (values rounded to half precision; Parquet keeps
            ``ARRAY<FLOAT>``).
        normalize: L2-normalize the output rows after the projection (default True).
        feature_name: the vector column and EasyRec input name (``item_emb``); ``id_column`` the ids (``item_id``).
        separator: between the values of a vector string (EasyRec ``separator``, ``","``); ``delimiter`` between
            CSV fields (``"\\t"``).
        incremental: append to the export in ``output``: only items whose id is new or whose source vector changed
            are written, with the export's saved projection.
        overwrite: replace an existing export instead of refusing (ignored with ``incremental``).
        fit_sample: rows sampled to fit the PCA; ``eps`` regularizes whitening; ``seed`` fixes the sample.
        batch_size: rows read per batch; ``part_size`` rows per part file.
        i2i_k: neighbours per item in ``i2i.{parquet,csv}``; 0 for no table; None keeps the export's earlier
            choice (none on a fresh export). The table is rebuilt over all items whenever items were written.
        i2i_threshold: minimum cosine score of a neighbour (see :func:`item_to_item`).
        i2i_format: ``"parquet"`` or ``"csv"``; ``i2i_index_key`` the faiss key (``"auto"``: Flat under 10k items,
            else IVF-Flat); ``i2i_target_recall`` the recall its search parameter is tuned to.
        allow_other_source: append a store whose ids are relative to another input folder than the export's
            (refused by default: equal relative ids from two folders name different items).
        verify: :func:`~mmpretrain.embeddings.open_store` check level for a store given by path.
        progress: tqdm bar over the rows.

    Returns:
        A JSON-ready summary: output, format, items, written (new + changed), new, changed, unchanged, seconds
        (all but the neighbour table), fit_seconds (the PCA fit, part of seconds), rows_per_s (input rows over
        seconds), input_dim, dim, dtype, normalize, projection, files, config and i2i.

    Raises:
        FeatureError: naming the item for a wrong vector length, NaN or inf, or a duplicate id; naming the setting
            (or the projection) when an append disagrees with the export.
    """
    tic = time.perf_counter()
    out = Path(output)
    previous = _read_manifest(out)
    if previous is not None and not incremental:
        if not overwrite:
            raise FeatureError(f"{out} already holds an export ({EXPORT_FILE}); pass incremental=true to append "
                               f"or overwrite=true to replace it")
        _remove_export(out, previous)
        previous = None
    settings = _settings({"format": format, "feature_name": feature_name, "id_column": id_column, "dtype": dtype,
                          "normalize": normalize, "separator": separator, "delimiter": delimiter}, out, previous)
    i2i = _i2i_request(previous, i2i_k, i2i_threshold, i2i_format, i2i_index_key, i2i_target_recall)
    # easyrec parts are unquoted CSV: a quote in an id would need quoting that EasyRec does not undo
    forbidden = settings.get("delimiter", "") + ('"' if settings["format"] == "easyrec" else "")
    data = _Input(source, ids, forbidden, verify)
    _check_same_source(out, previous, data, allow_other_source)
    fit_tic = time.perf_counter()
    proj = _resolve_projection(out, previous, data, dim, whiten, projection, fit_sample, eps, seed)
    fit_seconds = time.perf_counter() - fit_tic
    _check_input_dim(data, previous, proj)
    out_dim = proj.output_dim if proj is not None else data.dim
    out.mkdir(parents=True, exist_ok=True)

    known = _read_items(out, previous) if previous is not None else {}
    earlier_parts = previous["parts"] if previous is not None else []
    writer = _PartWriter(out, settings, previous["next_part"] if previous is not None else 0, part_size)
    hashes, changed = _stream(data, known, proj, settings, writer, batch_size, progress)
    new_parts = writer.close()
    rewriter = _PartWriter(out, settings, writer.next_part, part_size)
    kept = _rewrite_stale(out, earlier_parts, changed, known, settings, out_dim, rewriter)
    parts = kept + new_parts + rewriter.close()
    items = dict(known)
    for item, part in {**writer.part_of, **rewriter.part_of}.items():
        items[item] = (hashes.get(item, known.get(item, ("", ""))[0]), part)
    written = sum(1 for item, digest in hashes.items() if known.get(item, ("",))[0] != digest)
    if sum(part["count"] for part in parts) != len(items):
        raise FeatureError(f"export {out}: {sum(part['count'] for part in parts)} rows in parts but {len(items)} "
                           f"items in {previous['items']}; the earlier export is inconsistent")

    run = previous["run"] + 1 if previous is not None else 0
    items_file = f"items-{run:05d}.parquet"
    _write_items(out, items_file, items)
    if proj is not None and previous is None:
        proj.save(out)
    config = _write_config(out, settings, out_dim)
    seconds = time.perf_counter() - tic
    history = [*(previous or {}).get("runs", []), {
        "run": run, "source": data.name, "id_source": data.id_source,
        "store_fingerprint": data.store.fingerprint() if data.store is not None else None,
        "rows": data.count, "new": written - len(changed), "changed": len(changed), "written": written,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}]
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "settings": settings, "input_dim": data.dim,
        "dim": out_dim, "projection": proj.describe() if proj is not None else None, "count": len(items),
        "parts": parts, "next_part": rewriter.next_part, "items": items_file, "run": run, "runs": history,
        "i2i": (previous or {}).get("i2i") if written == 0 else None,
    }
    _write_manifest(out, manifest)
    superseded = [name for part in earlier_parts if part not in kept for name in _part_files(part)]
    for name in [*superseded, *([previous["items"]] if previous is not None else [])]:
        (out / name).unlink(missing_ok=True)
    log.info("exported %d of %d items (%d changed) to %s in %.1fs", written, data.count, len(changed), out, seconds)

    manifest["i2i"] = _neighbour_table(out, manifest, previous, i2i, seed, progress)
    _write_manifest(out, manifest)
    return {
        "output": str(out), "format": settings["format"], "items": len(items), "written": written,
        "new": written - len(changed), "changed": len(changed), "unchanged": data.count - written,
        "seconds": seconds, "fit_seconds": fit_seconds, "rows_per_s": data.count / seconds if seconds > 0 else None,
        "input_dim": data.dim, "dim": out_dim, "dtype": settings["dtype"], "normalize": settings["normalize"],
        "projection": {**manifest["projection"], "path": str(out / JSON_FILE)} if proj is not None else None,
        "files": [name for part in parts for name in _part_files(part)], "config": config, "i2i": manifest["i2i"],
    }


def _neighbour_table(
    out: Path, manifest: dict[str, Any], previous: dict[str, Any] | None, request: dict[str, Any] | None, seed: int,
    progress: bool,
) -> dict[str, Any] | None:
    """Build (or keep) the export's neighbour table; drop a table that would otherwise go stale."""
    current = manifest["i2i"]
    earlier = (previous or {}).get("i2i")
    if request is None:
        if earlier:
            (out / Path(earlier["path"]).name).unlink(missing_ok=True)
        return None
    if current and current["request"] == request:
        return current
    if earlier and Path(earlier["path"]).name != f"i2i.{request['format']}":
        (out / Path(earlier["path"]).name).unlink(missing_ok=True)
    ids, values = read_features(out)
    summary = item_to_item(values, out / f"i2i.{request['format']}", ids, request["k"], request["threshold"],
                           index_key=request["index_key"], target_recall=request["target_recall"], seed=seed,
                           progress=progress)
    return {**summary, "request": request}
