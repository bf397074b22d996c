"""Feature extraction at scale: Lightning predict over a folder, file list or manifest, into an embedding store.

The input is cut into fixed chunks of ``shard_size`` rows; chunk ``i`` becomes store shard ``i``, so the store's
row order is the input's whatever the number of processes. Each rank streams every finished batch to small part
files under ``<output>/.extract/parts/<chunk>/`` (nothing is kept in memory); the writer that completes a chunk
merges its parts, in row order, into the shard. Rank 0 then writes ``failed.jsonl`` and the manifest.

Resuming is the normal path, not a special mode: a shard on disk is skipped without decoding its images, and rows
already in part files are not run again. ``.extract/run.json`` records the settings (encoder, input ids, shard size,
dtype, ...) so a rerun with other settings is refused instead of mixing two extractions in one store.

Files that fail to decode are left out of the store, never replaced, and listed in ``failed.jsonl`` with the
reason; the run aborts when more than ``max_failure_rate`` of the inputs fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from mmpretrain._io import atomic_path, file_lock, write_text_atomic
from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, load_rgb
from mmpretrain.data.records import RECORD_SUFFIXES
from mmpretrain.data.sources import InputRows, is_video_manifest, parse_labels, read_image_input
from mmpretrain.embeddings import (
    FORMAT_NAME,
    MANIFEST,
    SUPPORTED_DTYPES,
    StoreError,
    check_id_text,
    finalize_store,
    shard_done,
    shard_name,
    write_shard,
)
from mmpretrain.encoders import ImageEncoder, ImageTransform, VideoEncoder, weights_sha256
from mmpretrain.errors import ConfigError

__all__ = [
    "FAILED_FILE",
    "RUN_DIR",
    "EncoderPredictor",
    "ExtractionDataModule",
    "ExtractionDataset",
    "ShardWriter",
    "check_run",
    "read_input",
    "run_extraction",
]

log = logging.getLogger(__name__)

RUN_DIR = ".extract"
FAILED_FILE = "failed.jsonl"
_RUN_FILE = "run.json"
_MIN_ROWS_FOR_RATE = 100
_PART_RE = re.compile(r"^(\d+)-(\d+)-r(\d+)\.npz$")
_STORE_FILE_RE = re.compile(r"^(?:embeddings-\d{5,}\.npy|metadata-\d{5,}\.parquet|manifest\.json)$")


# ----------------------------------------------------------------------------------------------- input


def read_input(source: str | os.PathLike, labels: str | bool = "auto", key: str = "input") -> InputRows:
    """Rows to extract from a folder, a file list, an image manifest or a video manifest (DESIGN §3).

    A manifest whose first record names a ``video`` is a video manifest (:func:`mmpretrain.video.video_input`);
    everything else is read by :func:`mmpretrain.data.read_image_input`, whose ``labels`` and ``key`` this takes.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in RECORD_SUFFIXES and is_video_manifest(path):
        from mmpretrain.video.manifest import video_input

        return video_input(path, parse_labels(labels, key), key)
    return read_image_input(path, labels, key)


# ----------------------------------------------------------------------------------------------- data


class ImageFileLoader:
    """Path -> ``(3, size, size)`` uint8 pixels through the encoder's transform; picklable for workers."""

    def __init__(self, transform: ImageTransform, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.transform = transform
        self.max_pixels = max_pixels
        self.shape = (3, transform.image_size, transform.image_size)

    def __call__(self, path: str) -> torch.Tensor:
        return self.transform(load_rgb(path, self.max_pixels))


def file_loader(encoder: ImageEncoder | VideoEncoder, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """What turns one input file into the encoder's uint8 input: an image transform or a clip decoder."""
    return encoder.loader if isinstance(encoder, VideoEncoder) else ImageFileLoader(encoder.transform, max_pixels)


class ExtractionDataset(Dataset):
    """Rows of an :class:`InputRows`; a file that fails to decode yields its error instead of pixels.

    Unlike the training dataset nothing is re-drawn: every sample is its own row, so a failure must travel with
    the row (as a non-empty ``error`` and zero pixels that are never embedded) to be left out and reported.
    """

    def __init__(self, source: InputRows, rows: Sequence[int], loader: Any) -> None:
        self.paths = source.paths
        self.titles, self.ocr = source.titles, source.ocr
        self.rows = np.asarray(rows, dtype=np.int64)
        self.loader = loader

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.rows[index])
        path = self.paths[row]
        text = {"title": self.titles[row] if self.titles else "", "ocr": self.ocr[row] if self.ocr else ""}
        try:
            pixels = self.loader(path)
        except Exception as err:  # PIL and the video decoders raise many exception types for bad files
            log.warning("cannot decode %s (row %d): %s: %s", path, row, type(err).__name__, err)
            return {"row": row, "pixels": torch.zeros(self.loader.shape, dtype=torch.uint8),
                    "error": f"{type(err).__name__}: {err}", **text}
        return {"row": row, "pixels": pixels, "error": "", **text}


class EncoderPredictor(pl.LightningModule):
    """The Lightning face of an encoder for ``trainer.predict``: embeds the rows that decoded."""

    def __init__(self, encoder: ImageEncoder | VideoEncoder, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.backbone  # registered, so Lightning moves it to the rank's device
        self.normalize = normalize

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        ok = np.array([not error for error in batch["error"]], dtype=bool)
        if ok.any():
            pixels = batch["pixels"][torch.from_numpy(ok).to(batch["pixels"].device)]
            if isinstance(self.encoder, VideoEncoder):
                keep = np.flatnonzero(ok)
                text = self.encoder.processor([batch["title"][i] for i in keep], [batch["ocr"][i] for i in keep])
                embeddings = self.encoder.embed(pixels, text, self.normalize).cpu().numpy()
            else:
                embeddings = self.encoder.embed(pixels, self.normalize).cpu().numpy()
        else:
            embeddings = np.empty((0, self.encoder.embed_dim), dtype=np.float32)
        return {"rows": batch["row"].cpu().numpy(), "ok": ok, "embeddings": embeddings, "errors": list(batch["error"])}


# ----------------------------------------------------------------------------------------------- parts and shards


def _run_dir(output: Path) -> Path:
    return output / RUN_DIR


def _parts_dir(output: Path, chunk: int) -> Path:
    return _run_dir(output) / "parts" / f"{chunk:05d}"


def _failed_part(output: Path, chunk: int) -> Path:
    return _run_dir(output) / f"failed-{chunk:05d}.jsonl"


def _write_part(
    output: Path, chunk: int, rank: int, rows: np.ndarray, ok: np.ndarray, embeddings: np.ndarray, errors: list[str]
) -> None:
    """One batch's rows of one chunk: ``<first row>-<row count>-r<rank>.npz``, renamed into place when complete."""
    folder = _parts_dir(output, chunk)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{int(rows[0]):010d}-{len(rows)}-r{rank}.npz"
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        np.savez(f, rows=rows, ok=ok, embeddings=embeddings, errors=np.array(errors, dtype=str))


def _part_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PART_RE.match(p.name))


def _covered_rows(folder: Path) -> int:
    """Rows the chunk's part files hold, from their names (cheap enough to ask after every batch)."""
    return sum(int(_PART_RE.match(p.name).group(2)) for p in _part_files(folder))


@contextlib.contextmanager
def _chunk_lock(output: Path, chunk: int) -> Iterator[None]:
    """Exclusive lock on a chunk, so two ranks finishing its last batches at once merge it only once."""
    with file_lock(_run_dir(output) / "parts" / f"{chunk:05d}.lock"):
        yield


@dataclasses.dataclass
class _Plan:
    """Where each row goes: chunk ``i`` holds rows ``[i * shard_size, (i + 1) * shard_size)``."""

    output: Path
    source: InputRows
    shard_size: int
    dtype: str
    dim: int

    @property
    def num_chunks(self) -> int:
        return -(-len(self.source) // self.shard_size)

    def bounds(self, chunk: int) -> tuple[int, int]:
        return chunk * self.shard_size, min((chunk + 1) * self.shard_size, len(self.source))

    def merge(self, chunk: int) -> bool:
        """Write shard ``chunk`` from its part files if they cover every row; False while rows are missing.

        Rows come out in input order; rows that failed to decode go to the chunk's failure list instead.
        """
        lo, hi = self.bounds(chunk)
        folder = _parts_dir(self.output, chunk)
        rows, ok, embeddings, errors = [], [], [], []
        for part in _part_files(folder):
            with np.load(part, allow_pickle=False) as data:
                full = np.zeros((len(data["rows"]), self.dim), dtype=np.float32)
                full[data["ok"]] = data["embeddings"]
                rows.append(data["rows"])
                ok.append(data["ok"])
                embeddings.append(full)
                errors.append(data["errors"])
        if not rows:
            return False
        all_rows = np.concatenate(rows)
        unique, first = np.unique(all_rows, return_index=True)  # a row run twice (padding) is kept once
        if unique[0] < lo or unique[-1] >= hi:
            raise RuntimeError(f"{folder}: part files hold rows outside chunk {chunk} ([{lo}, {hi}))")
        if len(unique) != hi - lo:
            return False
        good = np.concatenate(ok)[first]
        failed_rows = unique[~good]
        all_errors = np.concatenate(errors)[first][~good]
        failures = [
            {"row": int(r), "id": self.source.ids[r], "path": self.source.paths[r], "error": str(e)}
            for r, e in zip(failed_rows, all_errors)
        ]
        write_text_atomic(_failed_part(self.output, chunk), "".join(json.dumps(f) + "\n" for f in failures))
        kept = unique[good]
        write_shard(self.output, chunk, np.concatenate(embeddings)[first][good], self.source.metadata(kept),
                    dtype=self.dtype)
        shutil.rmtree(folder, ignore_errors=True)  # a padded duplicate may still land here; finalize clears it
        log.info("shard %d written: %d rows, %d failed", chunk, len(kept), len(failures))
        return True

    def merge_if_complete(self, chunk: int) -> None:
        """Merge ``chunk`` once its parts name as many rows as it has (under a lock; a no-op if already done)."""
        lo, hi = self.bounds(chunk)
        if _covered_rows(_parts_dir(self.output, chunk)) < hi - lo:
            return
        with _chunk_lock(self.output, chunk):
            if not shard_done(self.output, chunk):
                self.merge(chunk)

    def pending_rows(self) -> np.ndarray:
        """Rows not yet in a finished shard nor in a part file: what this run still has to decode and embed."""
        pending = []
        for chunk in range(self.num_chunks):
            if shard_done(self.output, chunk):
                continue
            lo, hi = self.bounds(chunk)
            todo = np.ones(hi - lo, dtype=bool)
            for part in _part_files(_parts_dir(self.output, chunk)):
                with np.load(part, allow_pickle=False) as data:
                    todo[data["rows"] - lo] = False
            pending.append(np.arange(lo, hi)[todo])
        return np.concatenate(pending) if pending else np.empty(0, dtype=np.int64)


def _is_store_manifest(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _clear_output(output: Path) -> None:
    """Remove what an extraction writes (store files, failed.jsonl, .extract/) and nothing else.

    A ``manifest.json`` is removed only when it is an embedding store's: an image manifest of the same name is the
    user's input, never the extraction's to delete.
    """
    for path in output.iterdir():
        if path.is_symlink():
            continue
        if (path.name == MANIFEST and _is_store_manifest(path)) or (
                path.name != MANIFEST and _STORE_FILE_RE.match(path.name)) or path.name == FAILED_FILE:
            path.unlink()
    shutil.rmtree(_run_dir(output), ignore_errors=True)


def check_run(output: Path, signature: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output holding an extraction with other settings (unless ``overwrite``), then record these.

    Shared by folder/manifest extraction and shard extraction (`mmpretrain.shard_extraction`).
    """
    output.mkdir(parents=True, exist_ok=True)
    run_file = _run_dir(output) / _RUN_FILE
    if overwrite:
        _clear_output(output)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        changed = {k: (previous.get(k), v) for k, v in signature.items() if previous.get(k) != v}
        if changed:
            shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise StoreError(f"output={output} holds an extraction with other settings ({shown}); it cannot be "
                             "resumed: set overwrite=true to replace it or choose another output folder")
    elif any(_STORE_FILE_RE.match(p.name) for p in output.iterdir()):
        raise StoreError(f"output={output} holds an embedding store not written by a resumable extraction; "
                         "set overwrite=true to replace it or choose another output folder")
    _run_dir(output).mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_file, json.dumps(signature, indent=2, sort_keys=True) + "\n")
    if _is_store_manifest(output / MANIFEST):
        (output / MANIFEST).unlink()
    (output / FAILED_FILE).unlink(missing_ok=True)


def _prepare_output(plan: _Plan, signature: dict[str, Any], overwrite: bool) -> None:
    """Check the output against this run's settings, record them, and tidy what a previous run left behind."""
    output = plan.output
    check_run(output, signature, overwrite)
    for chunk in range(plan.num_chunks):
        if shard_done(output, chunk):
            shutil.rmtree(_parts_dir(output, chunk), ignore_errors=True)
        else:
            plan.merge_if_complete(chunk)


class ExtractionDataModule(pl.LightningDataModule):
    """Prepares the output on global rank 0, then serves every rank the rows still to do.

    ``prepare_data`` runs on global rank 0 only and Lightning holds the other ranks at a barrier until it is done,
    so all ranks compute the same pending rows in ``setup``.
    """

    def __init__(
        self,
        plan: _Plan,
        loader: Any,
        signature: dict[str, Any],
        overwrite: bool,
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = False
        self.plan = plan
        self.loader = loader
        self.signature = signature
        self.overwrite = overwrite
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rows = np.empty(0, dtype=np.int64)

    def prepare_data(self) -> None:
        _prepare_output(self.plan, self.signature, self.overwrite)

    def setup(self, stage: str) -> None:
        rows = self.plan.pending_rows()
        done = len(self.plan.source) - len(rows)
        if done:
            log.info("resuming: %d of %d rows already extracted; %d to go", done, len(self.plan.source), len(rows))
        world = self.trainer.world_size if self.trainer is not None else 1
        if 0 < len(rows) < world:  # every rank needs a batch; a repeated row is merged once
            rows = np.concatenate([rows, np.full(world - len(rows), rows[-1])])
        self.rows = rows

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            ExtractionDataset(self.plan.source, self.rows, self.loader),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )


class ShardWriter(BasePredictionWriter):
    """Streams each batch to per-rank part files and merges a chunk into its shard as soon as it is complete.

    Also counts this rank's decode failures and aborts past ``max_failure_rate`` (checked once the rank has seen
    enough rows for the rate to mean something); rank 0 checks the exact global rate before finalizing.
    """

    def __init__(self, plan: _Plan, max_failure_rate: float) -> None:
        super().__init__(write_interval="batch")
        self.plan = plan
        self.max_failure_rate = max_failure_rate
        self.processed = 0
        self.failed = 0

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        rows, ok, errors = prediction["rows"], prediction["ok"], np.array(prediction["errors"], dtype=str)
        full = np.zeros((len(rows), self.plan.dim), dtype=np.float32)
        full[ok] = prediction["embeddings"]
        chunks = rows // self.plan.shard_size
        for chunk in np.unique(chunks):
            sel = chunks == chunk
            _write_part(self.plan.output, int(chunk), trainer.global_rank, rows[sel], ok[sel], full[sel][ok[sel]],
                        errors[sel].tolist())
            self.plan.merge_if_complete(int(chunk))
        self.processed += len(rows)
        self.failed += int((~ok).sum())
        if self.processed >= _MIN_ROWS_FOR_RATE and self.failed > self.max_failure_rate * self.processed:
            last = errors[~ok][-1] if (~ok).any() else "-"
            raise RuntimeError(
                f"{self.failed} of {self.processed} images failed to decode on rank {trainer.global_rank}, more than "
                f"max_failure_rate={self.max_failure_rate} (last error: {last}); see the log for the files"
            )

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Wait for every rank's parts before rank 0 finalizes."""
        trainer.strategy.barrier("mmpretrain_extract_parts")


def _finalize(
    plan: _Plan,
    encoder: ImageEncoder | VideoEncoder,
    normalize: bool,
    max_failure_rate: float,
    encoder_source: str | None,
) -> dict[str, Any]:
    """Merge what is left, write ``failed.jsonl``, check the failure rate and write the manifest."""
    output = plan.output
    for chunk in range(plan.num_chunks):
        if shard_done(output, chunk):
            continue
        plan.merge_if_complete(chunk)
        if not shard_done(output, chunk):
            lo, hi = plan.bounds(chunk)
            covered = _covered_rows(_parts_dir(output, chunk))
            raise RuntimeError(f"{output}: {shard_name(chunk)[0]} is incomplete ({covered} of {hi - lo} rows in part "
                               "files); rerun the same command to resume")
    failures = "".join(_failed_part(output, c).read_text(encoding="utf-8") for c in range(plan.num_chunks)
                       if _failed_part(output, c).is_file())
    write_text_atomic(output / FAILED_FILE, failures)
    failed = failures.count("\n")
    total = len(plan.source)
    if failed > max_failure_rate * total:
        raise RuntimeError(f"{failed} of {total} inputs failed to decode (listed in {output / FAILED_FILE}), more than "
                           f"max_failure_rate={max_failure_rate}; the shards are kept: rerun with a higher "
                           "max_failure_rate to accept them")
    manifest = finalize_store(
        output, encoder=encoder.name, dim=plan.dim, dtype=plan.dtype, normalized=normalize,
        extra={"input": str(plan.source.root), "id_source": str(plan.source.root.resolve()),
               "input_kind": plan.source.kind, "inputs": total, "failed": failed,
               "preprocessing": encoder.preprocessing, "precision": encoder.dtype,
               "encoder_source": _loadable(encoder_source or encoder.name),
               "random_init": bool(getattr(encoder, "random_init", False)),
               **({"embedding": encoder.embedding} if isinstance(encoder, VideoEncoder) else {})},
    )  # fmt: skip
    shutil.rmtree(_run_dir(output) / "parts", ignore_errors=True)
    log.info("embedding store %s: %d rows in %d shards, %d inputs failed", output, manifest["count"],
             len(manifest["shards"]), failed)
    return {"output": str(output), "count": manifest["count"], "failed": failed, "dim": plan.dim,
            "shards": len(manifest["shards"]), "dtype": plan.dtype}


def _loadable(source: str) -> str:
    """A local encoder path made absolute and resolved, so the store finds its encoder from any folder; registry
    names and URLs as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if "://" not in source and path.exists() else source


def run_extraction(
    encoder: ImageEncoder | VideoEncoder,
    source: InputRows,
    output: str | os.PathLike,
    trainer: pl.Trainer,
    *,
    batch_size: int = 64,
    num_workers: int = 4,
    shard_size: int = 50_000,
    dtype: str = "float32",
    normalize: bool = True,
    max_failure_rate: float = 0.1,
    overwrite: bool = False,
    encoder_source: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any] | None:
    """Embed every row of ``source`` with ``trainer.predict`` into the store at ``output`` (resuming if possible).

    ``trainer`` decides devices and processes (``devices``, ``num_nodes``, ``strategy``); the shard writer is added
    to its callbacks. Rerunning with the same settings resumes; other settings on the same ``output`` are refused
    unless ``overwrite``.

    Args:
        encoder: the encoder (on the CPU is fine: Lightning moves it to each rank's device).
        source: the rows, from :func:`read_input`.
        output: the store folder.
        trainer: a ``pytorch_lightning.Trainer`` without a logger.
        batch_size / num_workers: the predict DataLoader's.
        shard_size: rows per store shard; shard ``i`` holds input rows ``[i * shard_size, (i + 1) * shard_size)``.
        dtype: the store's on-disk dtype, ``float32`` or ``float16``.
        normalize: L2-normalise the rows.
        max_failure_rate: abort when a larger fraction of the inputs fails to decode.
        overwrite: delete an earlier extraction in ``output`` instead of resuming it.
        encoder_source: what loads the encoder again (name, path or URL), recorded in the manifest so a search can
            embed queries with the same encoder; defaults to the encoder's name.
        max_pixels: images with more pixels (from the header) are refused before decoding, as failed inputs.

    Returns:
        ``{"output", "count", "failed", "dim", "shards", "dtype"}`` on global rank 0, ``None`` on other ranks.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {SUPPORTED_DTYPES} (the store's on-disk dtype)")
    if not 0 <= max_failure_rate <= 1:
        raise ConfigError(f"max_failure_rate={max_failure_rate} must be within [0, 1]")
    check_id_text(source.ids, str(source.root))
    plan = _Plan(Path(output).expanduser(), source, shard_size, dtype, encoder.embed_dim)
    if plan.output.resolve() == source.root.resolve():
        raise StoreError(f"output={output} is the input's own folder ({source.root}); writing (or with overwrite, "
                         "clearing) a store there could replace the input: choose another output folder")
    signature = {  # through JSON, so it compares equal to the run.json it is checked against on resume
        "encoder": encoder.name,
        "dim": encoder.embed_dim,
        "preprocessing": encoder.preprocessing,
        "weights_sha256": weights_sha256(encoder.model if isinstance(encoder, VideoEncoder) else encoder.backbone),
        "precision": encoder.dtype,
        "normalize": normalize,
        "dtype": dtype,
        "shard_size": shard_size,
        "count": len(source),
        "ids_sha256": source.fingerprint(),
    }
    signature = json.loads(json.dumps(signature))
    writer = ShardWriter(plan, max_failure_rate)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ShardWriter)] + [writer]
    video_encoder = isinstance(encoder, VideoEncoder)
    if source.is_video != video_encoder:
        raise ConfigError(f"{source.root}: a {source.kind} needs {'a video' if source.is_video else 'an image'} "
                         f"encoder, but {encoder.name!r} is {'a video' if video_encoder else 'an image'} encoder")
    datamodule = ExtractionDataModule(plan, file_loader(encoder, max_pixels), signature, overwrite, batch_size,
                                      num_workers)
    trainer.predict(EncoderPredictor(encoder, normalize), datamodule=datamodule, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    return _finalize(plan, encoder, normalize, max_failure_rate, encoder_source)
