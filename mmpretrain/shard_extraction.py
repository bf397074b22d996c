"""Feature extraction from WebDataset shards: input shard ``i`` becomes store shard ``i``.

Every sample is embedded exactly once and keeps its key as ``id``; rows follow tar order inside a shard and shard
order across the store, so the store is the same on 1 and N processes. The shards still to do are dealt to the
ranks (``pending[rank::world]``) and, inside a rank, to the DataLoader workers; a worker reads a whole shard, so
when its last row (flagged ``last``) reaches the writer every earlier row of that shard has been written to part
files, and the writer merges them into the store shard. Resuming is per shard: finished store shards are skipped,
the parts of an unfinished one are discarded and the shard is read again.

Samples that fail (an undecodable image or video, a missing media member, a corrupt member) are left out of the
store and listed in ``failed.jsonl`` with their key; a shard that ends early is listed there too (``row`` -1) and
named in the log.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
import webdataset as wds
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpretrain._io import write_text_atomic
from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS
from mmpretrain.data.shards import SampleError, expand_shards, read_shard, sample_image, sample_json, sample_label
from mmpretrain.embeddings import finalize_store, shard_done, shard_name, write_shard
from mmpretrain.encoders import ImageEncoder, VideoEncoder, weights_sha256
from mmpretrain.extraction import FAILED_FILE, RUN_DIR, EncoderPredictor, check_run

log = logging.getLogger(__name__)

_SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def is_shard_input(spec: str | Sequence[str]) -> bool:
    """Whether ``input=`` names WebDataset shards (a ``.tar`` pattern or URL, ``pipe:``) rather than a folder/file."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        return False
    first = wds.shardlists.expand_urls(str(specs[0]).split()[0])[0] if not str(specs[0]).startswith("pipe:") else ""
    return not first or (first.split("?")[0].endswith(_SHARD_SUFFIXES) and not Path(first).is_dir())


class _Rows:
    """Raw shard sample -> one extraction row (pixels or an error), for images or videos; picklable."""

    def __init__(self, encoder: ImageEncoder | VideoEncoder, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.video = isinstance(encoder, VideoEncoder)
        self.max_pixels = max_pixels
        self.loader = encoder.loader if self.video else encoder.transform
        self.shape = encoder.loader.shape if self.video else (3, encoder.transform.image_size,
                                                              encoder.transform.image_size)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        row: dict[str, Any] = {"id": key, "title": "", "ocr": "", "label": "", "tags": "[]"}
        try:
            if self.video:
                from mmpretrain.video.io.shards import shard_record, video_member

                record = shard_record(raw)
                row.update(title=record.title or "", ocr=" ".join(record.ocr), label=record.label or "",
                           tags=json.dumps(list(record.tags)))
                pixels = self.loader(video_member(raw)[1], name=record.video)
            else:
                label, tags = sample_label(raw), sample_json(raw).get("tags") or []
                row.update(label="" if label is None else str(label), tags=json.dumps([str(t) for t in tags]))
                pixels = self.loader(sample_image(raw, self.max_pixels))
        except (SampleError, ValueError, RuntimeError) as err:  # VideoDecodeError is a RuntimeError
            log.warning("cannot embed sample %s of %s: %s", key, raw.get("__url__"), err)
            error = f"{type(err).__name__}: {err}"
            return {**row, "pixels": torch.zeros(self.shape, dtype=torch.uint8), "error": error}
        return {**row, "pixels": pixels, "error": ""}


class ShardExtractionDataset(IterableDataset):
    """Rows of this rank's shards, a whole shard per worker, each row tagged (shard, position, last)."""

    def __init__(self, urls: Sequence[str], shards: Sequence[int], rows: _Rows) -> None:
        self.urls, self.shards, self.rows = list(urls), list(shards), rows

    def _shard_rows(self, shard: int) -> Iterator[dict[str, Any]]:
        position = 0
        for raw in read_shard(self.urls[shard]):
            if "__error__" in raw:
                yield {**self._note(raw["__error__"], raw["__detail__"]), "shard": shard, "row": -1}
                continue
            yield {**self.rows(raw), "shard": shard, "row": position}
            position += 1

    def _note(self, reason: str, detail: str) -> dict[str, Any]:
        return {"id": "", "title": "", "ocr": "", "label": "", "tags": "[]",
                "pixels": torch.zeros(self.rows.shape, dtype=torch.uint8), "error": f"{reason}: {detail}"}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for shard in self.shards[worker::workers]:
            previous = None
            for row in self._shard_rows(shard):
                if previous is not None:
                    yield {**previous, "last": False}
                previous = row
            # an empty shard still says so, with a row that is not a sample (position -1, no error)
            yield {**(previous or {**self._note("", ""), "error": "", "shard": shard, "row": -1}), "last": True}


def _parts(output: Path, shard: int) -> Path:
    return output / RUN_DIR / "shard-parts" / f"{shard:05d}"


def _failed(output: Path, shard: int) -> Path:
    return output / RUN_DIR / f"failed-{shard:05d}.jsonl"


class ShardInputWriter(BasePredictionWriter):
    """Streams each batch to part files of its shards and writes a store shard when its last row arrives."""

    def __init__(self, output: Path, urls: Sequence[str], dim: int, dtype: str, video: bool) -> None:
        super().__init__(write_interval="batch")
        self.output, self.urls, self.dim, self.dtype, self.video = output, list(urls), dim, dtype, video
        self.batches = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        ok = prediction["ok"]
        full = np.zeros((len(ok), self.dim), dtype=np.float32)
        full[ok] = prediction["embeddings"]
        shards = batch["shard"].cpu().numpy()
        columns = {k: np.array(batch[k], dtype=str) for k in ("id", "title", "label", "tags", "error")}
        for shard in np.unique(shards):
            sel = shards == shard
            folder = _parts(self.output, int(shard))
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{self.batches:08d}-r{trainer.global_rank}.npz", "wb") as f:
                np.savez(f, row=batch["row"].cpu().numpy()[sel], ok=ok[sel], embeddings=full[sel],
                         **{k: v[sel] for k, v in columns.items()})
            if batch["last"].cpu().numpy()[sel].any():
                self.merge(int(shard))
        self.batches += 1

    def merge(self, shard: int) -> None:
        """Write store shard ``shard`` from its parts, in tar order; failures go to the shard's failure list."""
        folder = _parts(self.output, shard)
        parts = [dict(np.load(p, allow_pickle=False)) for p in sorted(folder.iterdir())]
        data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(data["row"], kind="stable")
        data = {k: v[order] for k, v in data.items()}
        sample = data["row"] >= 0
        good = sample & data["ok"]
        url = self.urls[shard]
        failures = [{"row": int(p), "id": i or None, "path": url, "error": str(e)}
                    for p, i, e in zip(data["row"], data["id"], data["error"]) if e]
        write_text_atomic(_failed(self.output, shard), "".join(json.dumps(f) + "\n" for f in failures))
        ids = data["id"][good].tolist()
        metadata = {
            "id": pa.array(ids, pa.string()),
            "path": pa.array([f"{url}#{i}" for i in ids], pa.string()),
            "label": pa.array([v or None for v in data["label"][good].tolist()], pa.string()),
            "tags": pa.array([json.loads(t) for t in data["tags"][good].tolist()], pa.list_(pa.string())),
        }
        if self.video:
            metadata["title"] = pa.array(data["title"][good].tolist(), pa.string())
        write_shard(self.output, shard, data["embeddings"][good], pa.table(metadata), dtype=self.dtype)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("shard %d (%s) written: %d rows, %d failed", shard, url, int(good.sum()), len(failures))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier("mmpretrain_extract_shards")


class ShardExtractionDataModule(pl.LightningDataModule):
    """Checks the output on global rank 0, then gives every rank its share of the shards still to do."""

    def __init__(self, output: Path, urls: Sequence[str], rows: _Rows, signature: dict[str, Any], overwrite: bool,
                 batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.prepare_data_per_node = False
        self.output, self.urls, self.rows = output, list(urls), rows
        self.signature, self.overwrite = signature, overwrite
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shards: list[int] = []

    def prepare_data(self) -> None:
        check_run(self.output, self.signature, self.overwrite)
        for shard in range(len(self.urls)):
            if not shard_done(self.output, shard):
                shutil.rmtree(_parts(self.output, shard), ignore_errors=True)  # resume: the shard is read again

    def setup(self, stage: str) -> None:
        pending = [s for s in range(len(self.urls)) if not shard_done(self.output, s)]
        if len(pending) < len(self.urls):
            log.info("resuming: %d of %d shards already extracted", len(self.urls) - len(pending), len(self.urls))
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        self.shards = pending[rank::world]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(ShardExtractionDataset(self.urls, self.shards, self.rows), batch_size=self.batch_size,
                          num_workers=min(self.num_workers, len(self.shards)), pin_memory=torch.cuda.is_available())


def run_shard_extraction(
    encoder: ImageEncoder | VideoEncoder,
    shards: str | Sequence[str],
    output: str | Path,
    trainer: pl.Trainer,
    *,
    batch_size: int = 64,
    num_workers: int = 4,
    dtype: str = "float32",
    normalize: bool = True,
    max_failure_rate: float = 0.1,
    overwrite: bool = False,
    encoder_source: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any] | None:
    """Embed every sample of the shards into the store at ``output`` (see the module doc); arguments as
    `mmpretrain.extraction.run_extraction`. Returns the summary on global rank 0, None elsewhere."""
    urls = expand_shards(shards, key="input")
    output = Path(output).expanduser()
    video = isinstance(encoder, VideoEncoder)
    signature = json.loads(json.dumps({
        "encoder": encoder.name, "dim": encoder.embed_dim, "preprocessing": encoder.preprocessing,
        "precision": encoder.dtype, "normalize": normalize, "dtype": dtype, "shards": urls,
    }))
    writer = ShardInputWriter(output, urls, encoder.embed_dim, dtype, video)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ShardInputWriter)] + [writer]
    datamodule = ShardExtractionDataModule(output, urls, _Rows(encoder, max_pixels), signature, overwrite, batch_size,
                                           num_workers)
    trainer.predict(EncoderPredictor(encoder, normalize), datamodule=datamodule, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    missing = [urls[s] for s in range(len(urls)) if not shard_done(output, s)]
    if missing:
        raise RuntimeError(f"{output}: {len(missing)} shards were not extracted (first: {missing[0]}); rerun the same "
                           "command to resume")
    lines = "".join(_failed(output, s).read_text(encoding="utf-8") for s in range(len(urls))
                    if _failed(output, s).is_file())
    write_text_atomic(output / FAILED_FILE, lines)
    failed = lines.count("\n")
    total = failed + sum(pq.ParquetFile(output / shard_name(s)[1]).metadata.num_rows for s in range(len(urls)))
    if failed > max_failure_rate * max(total, 1):
        raise RuntimeError(f"{failed} of {total} samples failed (listed in {output / FAILED_FILE}), more than "
                           f"max_failure_rate={max_failure_rate}; the shards are kept: rerun with a higher "
                           "max_failure_rate to accept them")
    manifest = finalize_store(output, encoder=encoder.name, dim=encoder.embed_dim, dtype=dtype, normalized=normalize,
                              extra={"input": urls[0] if len(urls) == 1 else f"{urls[0]} .. {urls[-1]}",
                                     "input_kind": "shards", "shards": len(urls), "failed": failed,
                                     "preprocessing": encoder.preprocessing, "precision": encoder.dtype,
                                     "encoder_source": encoder_source or encoder.name,
                                     "weights_sha256": weights_sha256(encoder.model if video else encoder.backbone)})
    shutil.rmtree(output / RUN_DIR / "shard-parts", ignore_errors=True)
    log.info("embedding store %s: %d rows from %d shards, %d failed", output, manifest["count"], len(urls), failed)
    return {"output": str(output), "count": manifest["count"], "failed": failed, "dim": encoder.embed_dim,
            "shards": len(manifest["shards"]), "dtype": dtype}
