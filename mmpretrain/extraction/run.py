"""The run folder ``<output>/.extract/``: its layout, the lock, the resume signature, and the end of a run.

Every extraction (from files or from shards) keeps its state here::

    .extract/lock                 held by the run writing the store; a second run is refused while it is held
    .extract/run.json             the resume signature: encoder, weights sha256, preprocessing, input, settings
    .extract/inputs.json          each store shard's input fingerprint at start (sizes + mtimes, or an ETag)
    .extract/parts/NNNNN/         part files of store shard N (and ``end.json`` once its input shard ended)
    .extract/failed-NNNNN.jsonl   store shard N's failed rows
    .extract/shard-NNNNN.json     what store shard N was made from (input fingerprint, read to its end or not)

A rerun with the same signature resumes; another signature is refused, naming what changed, unless
``overwrite=true``. The end of a run (:func:`finish_run`) refuses to write a manifest over a store that lost data
beyond ``max_failure_rate``, or lost samples it cannot count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mmpretrain._io import file_lock, write_text_atomic
from mmpretrain.embeddings import FORMAT_NAME, MANIFEST, StoreError, finalize_store, shard_done, shard_name
from mmpretrain.errors import MMPretrainError

log = logging.getLogger(__name__)

RUN_DIR = ".extract"
FAILED_FILE = "failed.jsonl"
RUN_FILE = "run.json"
INPUTS_FILE = "inputs.json"
LOCK_FILE = "lock"
_STORE_FILE_RE = re.compile(r"^(?:embeddings-\d{5,}\.npy|metadata-\d{5,}\.parquet|manifest\.json)$")
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "JSM_NAMESPACE_RANK")


class ExtractionError(MMPretrainError, RuntimeError):
    """An extraction that cannot finish without losing data: named shard, URL or folder, and what to do."""


def run_dir(output: Path) -> Path:
    """``<output>/.extract``: the run's state."""
    return output / RUN_DIR


def parts_dir(output: Path, shard: int) -> Path:
    """Where store shard ``shard``'s part files wait to be merged."""
    return run_dir(output) / "parts" / f"{shard:05d}"


def failed_part(output: Path, shard: int) -> Path:
    """Store shard ``shard``'s failed rows, one JSON object a line."""
    return run_dir(output) / f"failed-{shard:05d}.jsonl"


def shard_record(output: Path, shard: int) -> Path:
    """What store shard ``shard`` was made from: ``{"input": fingerprint, "complete": bool}``."""
    return run_dir(output) / f"shard-{shard:05d}.json"


def read_json(path: Path) -> Any:
    """A JSON file the run wrote, or None where it is missing."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def launch_rank_zero() -> bool:
    """Whether this process is the run's first (every rank variable a launcher sets, where set, is 0).

    Known before Lightning starts the other processes, so the run lock is taken before any rank writes.
    """
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


@contextlib.contextmanager
def run_lock(output: Path) -> Iterator[None]:
    """Hold ``.extract/lock`` for the whole run; a second run into the same ``output`` is refused at once.

    Two runs writing one store would each merge shards the other half wrote (or deleted): the second one fails
    with this message instead, and the first finishes a whole store.
    """
    path = run_dir(output) / LOCK_FILE
    try:
        with file_lock(path, blocking=False):
            yield
    except BlockingIOError as err:
        raise ExtractionError(f"output={output} is being written by another extraction (it holds {path}); wait "
                              "for it to finish, then rerun to resume, or choose another output folder") from err


def _is_store_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _clear_output(output: Path) -> None:
    """Remove what an extraction writes (store files, failed.jsonl, the run state) and nothing else.

    A ``manifest.json`` is removed only when it is an embedding store's: an image manifest of the same name is the
    user's input, never the extraction's to delete. The lock file stays: this run holds it.
    """
    for path in output.iterdir():
        if path.is_symlink():
            continue
        if (path.name == MANIFEST and _is_store_manifest(path)) or (
                path.name != MANIFEST and _STORE_FILE_RE.match(path.name)) or path.name == FAILED_FILE:
            path.unlink()
    for path in run_dir(output).iterdir() if run_dir(output).is_dir() else ():
        if path.name != LOCK_FILE:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _changes(previous: dict[str, Any], signature: dict[str, Any]) -> list[str]:
    """What differs, one ``key: old -> new`` each; for lists of the same length, the first differing item."""
    shown = []
    for key, new in signature.items():
        old = previous.get(key)
        if old == new:
            continue
        if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
            shown.append(f"{key}[{i}]: {old[i]!r} -> {new[i]!r}")
        else:
            shown.append(f"{key}: {old!r} -> {new!r}")
    return shown


def check_run(output: Path, signature: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output holding an extraction with other settings (unless ``overwrite``), then record these.

    The signature holds the encoder's weights sha256, so a model overwritten under the same name or path (a
    ``last.ckpt`` of a running training) is never mixed into a half-made store.
    """
    output.mkdir(parents=True, exist_ok=True)
    run_file = run_dir(output) / RUN_FILE
    if overwrite:
        _clear_output(output)
    elif run_file.is_file():
        changed = _changes(json.loads(run_file.read_text(encoding="utf-8")), signature)
        if changed:
            raise StoreError(f"output={output} holds an extraction with other settings ({', '.join(changed)}); it "
                             "cannot be resumed: set overwrite=true to replace it or choose another output folder")
    elif any(_STORE_FILE_RE.match(p.name) for p in output.iterdir()):
        raise StoreError(f"output={output} holds an embedding store not written by a resumable extraction; "
                         "set overwrite=true to replace it or choose another output folder")
    run_dir(output).mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_file, json.dumps(signature, indent=2, sort_keys=True) + "\n")
    if _is_store_manifest(output / MANIFEST):
        (output / MANIFEST).unlink()
    (output / FAILED_FILE).unlink(missing_ok=True)


def reopen_shard(output: Path, shard: int, why: str) -> None:
    """Make a finished store shard pending again (its input changed, or was not read to its end)."""
    log.warning("store shard %d is extracted again: %s", shard, why)
    npy, parquet = shard_name(shard)
    (output / npy).unlink(missing_ok=True)  # the completion mark goes first
    (output / parquet).unlink(missing_ok=True)
    failed_part(output, shard).unlink(missing_ok=True)
    shard_record(output, shard).unlink(missing_ok=True)


def reopen_changed(output: Path, fingerprints: Sequence[Any], names: Sequence[str]) -> None:
    """Reopen each finished shard read only in part, or whose input's fingerprint differs from the recorded one.

    A fingerprint that cannot be taken now (a server that is down) is not a change: that shard is kept.
    """
    for shard, name in enumerate(names):
        record = read_json(shard_record(output, shard))
        if record is None or not shard_done(output, shard):
            continue
        if not record.get("complete", True):
            reopen_shard(output, shard, f"{name} was not read to its end last time")
            continue
        old, new = record.get("input"), fingerprints[shard]
        if old is not None and new is not None and old != new:
            reopen_shard(output, shard, f"{name} changed since it was extracted ({old} -> {new})")


def _lost(failures: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Samples lost (failed rows, plus what shards that ended early did not deliver) and the shards whose loss
    cannot be counted (nothing read, or no recorded sample count)."""
    lost, uncounted = 0, []
    for failure in failures:
        if failure["row"] >= 0:
            lost += 1
        elif failure.get("missing") is None or failure.get("read") == 0:
            uncounted.append(f"{failure['path']} ({failure['error']})")
        else:
            lost += failure["missing"]
    return lost, uncounted


def finish_run(output: Path, names: Sequence[str], unit: str, max_failure_rate: float,
               store: dict[str, Any]) -> dict[str, Any]:
    """Check every shard is written, gather ``failed.jsonl``, check what was lost, and write the manifest.

    ``names`` name the store shards' inputs (for messages), ``unit`` what a row is (``inputs``, ``samples``),
    ``store`` the :func:`~mmpretrain.embeddings.finalize_store` arguments. Raises :class:`ExtractionError` (the
    shards stay, a rerun resumes) for a missing shard, for an input shard that could not be read or whose lost
    samples cannot be counted, and for a failure rate above ``max_failure_rate``.
    """
    missing = [s for s in range(len(names)) if not shard_done(output, s)]
    if missing:
        raise ExtractionError(f"{output}: {len(missing)} store shards are not written (first: "
                              f"{shard_name(missing[0])[0]}, from {names[missing[0]]}); rerun the same command to "
                              "resume")
    failures = []
    for shard in range(len(names)):
        path = failed_part(output, shard)
        if path.is_file():
            failures += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    write_text_atomic(output / FAILED_FILE, "".join(json.dumps(f) + "\n" for f in failures))
    lost, uncounted = _lost(failures)
    if uncounted:
        raise ExtractionError(f"{len(uncounted)} input shards could not be read to their end, with nothing read or "
                              f"no shards.json count to tell what was lost (first: {uncounted[0]}); listed in "
                              f"{output / FAILED_FILE}: rerun the same command to retry them")
    total = lost + sum(pq.ParquetFile(output / shard_name(s)[1]).metadata.num_rows for s in range(len(names)))
    if lost > max_failure_rate * max(total, 1):
        raise ExtractionError(f"{lost} of {total} {unit} failed (listed in {output / FAILED_FILE}), more than "
                              f"max_failure_rate={max_failure_rate}; the shards are kept: rerun to retry input shards "
                              "that ended early, or rerun with a higher max_failure_rate to accept them")
    written = finalize_store(output, **{**store, "extra": {**store.get("extra", {}), "failed": lost}})
    shutil.rmtree(run_dir(output) / "parts", ignore_errors=True)
    log.info("embedding store %s: %d rows in %d shards, %d %s failed", output, written["count"],
             len(written["shards"]), lost, unit)
    return {"output": str(output), "count": written["count"], "failed": lost, "dim": store["dim"],
            "shards": len(written["shards"]), "dtype": store["dtype"]}
