"""The one extraction pipeline: a row source, Lightning predict, the store writer, and the run's end.

:func:`run_extraction` (a folder, file list or manifest) and :func:`run_shard_extraction` (WebDataset shards) differ
only in their row source; both hold the run lock from before the first rank starts until the manifest is written.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from mmpretrain._io import write_text_atomic
from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS
from mmpretrain.data.shards import expand_shards
from mmpretrain.data.sources import InputRows
from mmpretrain.embeddings import SUPPORTED_DTYPES, StoreError, check_id_text
from mmpretrain.encoders import Encoder
from mmpretrain.errors import ConfigError
from mmpretrain.extraction.inputs import InputSource
from mmpretrain.extraction.run import (
    INPUTS_FILE,
    check_run,
    finish_run,
    launch_rank_zero,
    reopen_changed,
    run_dir,
    run_lock,
)
from mmpretrain.extraction.shards import ShardSource
from mmpretrain.extraction.sources import RowSource
from mmpretrain.extraction.writer import StoreWriter

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["EncoderPredictor", "ExtractOptions", "ExtractionDataModule", "run_extraction", "run_shard_extraction"]


class EncoderPredictor(pl.LightningModule):
    """The Lightning face of an encoder for ``trainer.predict``: embeds the rows that decoded."""

    def __init__(self, encoder: Encoder, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.backbone = encoder.backbone  # registered, so Lightning moves it to the rank's device
        self.normalize = normalize

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        ok = np.array([not error for error in batch["error"]], dtype=bool) & (batch["pos"].cpu().numpy() >= 0)
        if not ok.any():
            return {"ok": ok, "embeddings": np.empty((0, self.encoder.embed_dim), dtype=np.float32)}
        keep = np.flatnonzero(ok)
        pixels = batch["pixels"][torch.from_numpy(ok).to(batch["pixels"].device)]
        titles, ocr = [batch["title"][i] for i in keep], [batch["ocr"][i] for i in keep]
        embeddings = self.encoder.embed_batch(pixels, titles, ocr, self.normalize)
        return {"ok": ok, "embeddings": embeddings.cpu().numpy()}


class ExtractionDataModule(pl.LightningDataModule):
    """Prepares the output on global rank 0, then serves every rank its rows still to do.

    ``prepare_data`` runs on global rank 0 only and Lightning holds the other ranks at a barrier until it is done,
    so every rank sees the same pending work in ``predict_dataloader``.
    """

    def __init__(self, output: Path, source: RowSource, signature: dict[str, Any], overwrite: bool, dtype: str,
                 batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.prepare_data_per_node = False
        self.output, self.source, self.signature, self.overwrite = output, source, signature, overwrite
        self.dtype, self.batch_size, self.num_workers = dtype, batch_size, num_workers

    def prepare_data(self) -> None:
        """Check the signature, record the inputs' fingerprints, reopen finished shards whose input changed or was
        not read to its end, then let the source tidy the rest."""
        check_run(self.output, self.signature, self.overwrite)
        fingerprints = self.source.fingerprints()
        write_text_atomic(run_dir(self.output) / INPUTS_FILE, json.dumps(fingerprints) + "\n")
        reopen_changed(self.output, fingerprints, self.source.names)
        self.source.prepare(self.output, self.dtype)

    def predict_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return self.source.loader(self.output, world, rank, self.batch_size, self.num_workers)


def _loadable(source: str) -> str:
    """A local encoder path made absolute and resolved, so the store finds its encoder from any folder; registry
    names and URLs as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if "://" not in source and path.exists() else source


def _check_options(batch_size: int, dtype: str, max_failure_rate: float) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if dtype not in SUPPORTED_DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {SUPPORTED_DTYPES} (the store's on-disk dtype)")
    if not 0 <= max_failure_rate <= 1:
        raise ConfigError(f"max_failure_rate={max_failure_rate} must be within [0, 1]")


class ExtractOptions(TypedDict, total=False):
    """The keyword options both entry points take; see :func:`run_extraction` for each one's meaning and default."""

    batch_size: int
    num_workers: int
    dtype: str
    normalize: bool
    max_failure_rate: float
    overwrite: bool
    encoder_source: str | None


def _extract(encoder: Encoder, source: RowSource, output: Path, trainer: pl.Trainer, *, batch_size: int = 64,
             num_workers: int = 4, dtype: str = "float32", normalize: bool = True, max_failure_rate: float = 0.1,
             overwrite: bool = False, encoder_source: str | None = None) -> dict[str, Any] | None:
    """Lock the output, predict every pending row into it, then end the run (on global rank 0)."""
    _check_options(batch_size, dtype, max_failure_rate)
    signature = json.loads(json.dumps({  # through JSON, so it compares equal to the run.json it is checked against
        "encoder": encoder.name, "dim": encoder.embed_dim, "preprocessing": encoder.preprocessing,
        **encoder.settings(), "weights_sha256": encoder.weights_sha256(), "normalize": normalize, "dtype": dtype,
        **source.signature(),
    }))
    writer = StoreWriter(output, source, dtype, max_failure_rate)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, StoreWriter)] + [writer]
    datamodule = ExtractionDataModule(output, source, signature, overwrite, dtype, batch_size, num_workers)
    with run_lock(output) if launch_rank_zero() else contextlib.nullcontext():
        trainer.predict(EncoderPredictor(encoder, normalize), datamodule=datamodule, return_predictions=False)
        if not trainer.is_global_zero:
            return None
        extra = {**source.manifest(), "preprocessing": encoder.preprocessing, **encoder.settings(),
                 "encoder_source": _loadable(encoder_source or encoder.name),
                 "weights_sha256": signature["weights_sha256"],
                 "random_init": bool(getattr(encoder, "random_init", False))}
        store = {"encoder": encoder.name, "dim": encoder.embed_dim, "dtype": dtype, "normalized": normalize,
                 "extra": extra}
        return finish_run(output, source.names, source.unit, max_failure_rate, store)


def run_extraction(
    encoder: Encoder,
    source: InputRows,
    output: str | os.PathLike,
    trainer: pl.Trainer,
    *,
    shard_size: int = 50_000,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: Unpack[ExtractOptions],
) -> dict[str, Any] | None:
    """Embed every row of ``source`` with ``trainer.predict`` into the store at ``output`` (resuming if possible).

    ``trainer`` decides devices and processes (``devices``, ``num_nodes``, ``strategy``); the store writer is added
    to its callbacks. Rerunning with the same settings resumes; other settings (another encoder, changed weights,
    other input rows) on the same ``output`` are refused unless ``overwrite``; a second run into an ``output`` that
    a run is writing is refused.

    Args:
        encoder: any :class:`~mmpretrain.encoders.Encoder` (on the CPU is fine: Lightning moves it to each rank).
        source: the rows, from :func:`~mmpretrain.extraction.read_input`.
        output: the store folder.
        trainer: a ``pytorch_lightning.Trainer`` without a logger.
        shard_size: rows per store shard; shard ``i`` holds input rows ``[i * shard_size, (i + 1) * shard_size)``.
        max_pixels: images with more pixels (from the header) are refused before decoding, as failed inputs.
        **options: :class:`ExtractOptions`:

            - ``batch_size`` / ``num_workers``: the predict DataLoader's (64 / 4).
            - ``dtype``: the store's on-disk dtype, ``float32`` (default) or ``float16``.
            - ``normalize``: L2-normalise the rows (default true).
            - ``max_failure_rate``: fail the run when a larger fraction of the inputs is lost (default 0.1).
            - ``overwrite``: delete an earlier extraction in ``output`` instead of resuming it (default false).
            - ``encoder_source``: what loads the encoder again (name, path or URL), recorded in the manifest so a
              search can embed queries with the same encoder; defaults to the encoder's name.

    Returns:
        ``{"output", "count", "failed", "dim", "shards", "dtype"}`` on global rank 0, ``None`` on other ranks.
    """
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    check_id_text(source.ids, str(source.root))
    out = Path(output).expanduser()
    if out.resolve() == source.root.resolve():
        raise StoreError(f"output={output} is the input's own folder ({source.root}); writing (or with overwrite, "
                         "clearing) a store there could replace the input: choose another output folder")
    video_encoder = encoder.kind == "video"
    if source.is_video != video_encoder:
        raise ConfigError(f"{source.root}: a {source.kind} needs {'a video' if source.is_video else 'an image'} "
                          f"encoder, but {encoder.name!r} is {'a video' if video_encoder else 'an image'} encoder")
    rows = InputSource(source, shard_size, encoder.batch_loader(max_pixels), encoder.embed_dim)
    return _extract(encoder, rows, out, trainer, **options)


def run_shard_extraction(
    encoder: Encoder,
    shards: str | list[str],
    output: str | os.PathLike,
    trainer: pl.Trainer,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **options: Unpack[ExtractOptions],
) -> dict[str, Any] | None:
    """Embed every sample of WebDataset shards into the store at ``output``: input shard ``i`` = store shard ``i``.

    ``shards`` is a brace pattern, a space-separated string or a list of paths, URLs and ``pipe:`` commands; the
    other arguments are :func:`run_extraction`'s. A shard that ends early is kept for this run if the failure rate
    allows (its lost samples, from ``shards.json``, count as failures) and read again by the next run; one whose
    lost samples cannot be counted fails the run, naming it. Returns the summary on global rank 0, None elsewhere.
    """
    source = ShardSource(expand_shards(shards, key="input"), encoder, max_pixels)
    return _extract(encoder, source, Path(output).expanduser(), trainer, **options)
