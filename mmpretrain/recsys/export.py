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
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmpretrain._io import atomic_path, sha256_file
from mmpretrain.errors import ConfigError
from mmpretrain.recsys.folder import (
    CONFIG_FILE,
    EXPORT_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    part_files,
    part_settings,
    read_features,
    read_items,
    read_manifest,
    remove_export,
    verify_part,
    write_items,
    write_manifest,
)
from mmpretrain.recsys.formats import (
    FORMATS,
    SUFFIXES,
    check_separators,
    easyrec_config,
    read_part,
    torcheasyrec_config,
    write_part,
)
from mmpretrain.recsys.inputs import ExportInput, Source, content_hashes
from mmpretrain.recsys.neighbours import TABLE_FORMATS, item_to_item
from mmpretrain.recsys.projection import (
    JSON_FILE,
    OUTPUT_DTYPES,
    Projection,
    fit_projection,
    load_projection,
    prepare_features,
)
from mmpretrain.recsys.validation import FeatureError, check_finite

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
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
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    for key in ("feature_name", "id_column"):
        if not _NAME_RE.match(merged[key]):
            raise ConfigError(f"{key}={merged[key]!r} must be a column name of letters, digits and '_'")
    if merged["feature_name"] == merged["id_column"]:
        raise ConfigError(f"feature_name and id_column must differ, both are {merged['feature_name']!r}")
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


def _check_same_source(out: Path, previous: dict[str, Any] | None, data: ExportInput, allow: bool) -> None:
    """Store ids are relative to the folder they were extracted from: appending another folder's store would match
    ``circle/00.png`` of train against ``circle/00.png`` of val and silently replace it."""
    if previous is None or data.store is None or allow:
        return
    earlier = next((run.get("id_source") for run in reversed(previous.get("runs", [])) if run.get("id_source")), None)
    current = data.id_source
    if earlier is not None and current != earlier:
        raise FeatureError(f"cannot append store {data.name} to {out}: its ids are relative to {current!r}, the "
                           f"export's to {earlier!r}; pass allow_other_source=true if they name the same items")


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
    out: Path, previous: dict[str, Any] | None, data: ExportInput, dim: int | None, whiten: bool | None,
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


def _check_input_dim(data: ExportInput, previous: dict[str, Any] | None, projection: Projection | None) -> None:
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
        files = write_part(self.out / name, self.settings["format"], ids, values, **part_settings(self.settings))
        entry: dict[str, Any] = {"file": name, "count": len(ids), "sha256": sha256_file(files[0])}
        if len(files) > 1:
            entry.update(ids_file=files[1].name, ids_sha256=sha256_file(files[1]))
        self.parts.append(entry)
        self.part_of.update(dict.fromkeys(ids.tolist(), name))


def _i2i_request(previous: dict[str, Any] | None, k: int | None, threshold: float | None, fmt: str,
                 index_key: str, target_recall: float | None) -> dict[str, Any] | None:
    """This run's neighbour-table settings: as given, inherited from the earlier export when ``k`` is None."""
    if k is None:
        earlier = (previous or {}).get("i2i")
        return earlier["request"] if earlier else None
    if k < 0:
        raise ConfigError(f"i2i_k must be >= 0, got {k}")
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"i2i_format must be one of {TABLE_FORMATS}, got {fmt!r}")
    if k == 0:
        return None
    return {"k": k, "threshold": threshold, "format": fmt, "index_key": index_key, "target_recall": target_recall}


def _stream(
    data: ExportInput, known: dict[str, tuple[str, str]], proj: Projection | None, settings: dict[str, Any],
    writer: _PartWriter, batch_size: int, progress: bool,
) -> tuple[dict[str, str], set[str]]:
    """Hash every input item and export those that are new or changed; returns all hashes and the changed ids."""
    hashes: dict[str, str] = {}
    changed: set[str] = set()
    with tqdm(total=data.count, desc="export", unit="item", disable=not progress) as bar:
        for batch_ids, batch in data.batches(batch_size):
            selected = []
            for row, (item, digest) in enumerate(zip(batch_ids.tolist(), content_hashes(batch))):
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
            verify_part(out, part)
            old_ids, old_values = read_part(out / part["file"], settings["format"], dim=dim,
                                            **part_settings(settings))
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

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from mmpretrain.recsys import read_features
        >>> out = tempfile.TemporaryDirectory()
        >>> vectors = np.random.default_rng(0).normal(size=(100, 32)).astype("float32")
        >>> summary = export_features(vectors, out.name, ids=[f"item{i}" for i in range(100)], dim=8)
        >>> summary["items"], summary["dim"], summary["files"]
        (100, 8, ['features-00000.parquet'])
        >>> more = export_features(vectors[:10] * 2, out.name, ids=[f"new{i}" for i in range(10)], incremental=True)
        >>> more["new"], more["items"]  # appended with the export's saved PCA
        (10, 110)
        >>> ids, features = read_features(out.name)
        >>> features.shape
        (110, 8)
        >>> out.cleanup()
    """
    tic = time.perf_counter()
    out = Path(output)
    previous = read_manifest(out)
    if previous is not None and not incremental:
        if not overwrite:
            raise FeatureError(f"{out} already holds an export ({EXPORT_FILE}); pass incremental=true to append "
                               f"or overwrite=true to replace it")
        remove_export(out, previous)
        previous = None
    settings = _settings({"format": format, "feature_name": feature_name, "id_column": id_column, "dtype": dtype,
                          "normalize": normalize, "separator": separator, "delimiter": delimiter}, out, previous)
    i2i = _i2i_request(previous, i2i_k, i2i_threshold, i2i_format, i2i_index_key, i2i_target_recall)
    # easyrec parts are unquoted CSV: a quote in an id would need quoting that EasyRec does not undo
    forbidden = settings.get("delimiter", "") + ('"' if settings["format"] == "easyrec" else "")
    data = ExportInput(source, ids, forbidden, verify)
    _check_same_source(out, previous, data, allow_other_source)
    fit_tic = time.perf_counter()
    proj = _resolve_projection(out, previous, data, dim, whiten, projection, fit_sample, eps, seed)
    fit_seconds = time.perf_counter() - fit_tic
    _check_input_dim(data, previous, proj)
    out_dim = proj.output_dim if proj is not None else data.dim
    out.mkdir(parents=True, exist_ok=True)

    known = read_items(out, previous) if previous is not None else {}
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
    write_items(out, items_file, items)
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
    write_manifest(out, manifest)
    superseded = [name for part in earlier_parts if part not in kept for name in part_files(part)]
    for name in [*superseded, *([previous["items"]] if previous is not None else [])]:
        (out / name).unlink(missing_ok=True)
    log.info("exported %d of %d items (%d changed) to %s in %.1fs", written, data.count, len(changed), out, seconds)

    manifest["i2i"] = _neighbour_table(out, manifest, previous, i2i, seed, progress)
    write_manifest(out, manifest)
    return {
        "output": str(out), "format": settings["format"], "items": len(items), "written": written,
        "new": written - len(changed), "changed": len(changed), "unchanged": data.count - written,
        "seconds": seconds, "fit_seconds": fit_seconds, "rows_per_s": data.count / seconds if seconds > 0 else None,
        "input_dim": data.dim, "dim": out_dim, "dtype": settings["dtype"], "normalize": settings["normalize"],
        "projection": {**manifest["projection"], "path": str(out / JSON_FILE)} if proj is not None else None,
        "files": [name for part in parts for name in part_files(part)], "config": config, "i2i": manifest["i2i"],
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
