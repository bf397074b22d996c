"""`mmpretrain-extract encoder=<name|path|url> input=<folder|file list|manifest|shards> output=<dir>`: an embedding
store. WebDataset shards (``input=/data/{000000..000099}.tar``) go through
`mmpretrain.extraction.run_shard_extraction`."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from mmpretrain.cli.entry import print_outputs, run_hydra, short_errors
from mmpretrain.cli.utils import apply_extras, check_trainer, instantiate, task_wrapper
from mmpretrain.data import loader_workers
from mmpretrain.data.sources import describe_labels
from mmpretrain.encoders import load_encoder
from mmpretrain.extraction import is_shard_input, read_input, run_extraction, run_shard_extraction
from mmpretrain.models import coverage_warning

log = logging.getLogger(__name__)


@task_wrapper
def extract(cfg: DictConfig) -> dict[str, Any] | None:
    """Load the encoder, read the input and run Lightning predict into the store at `cfg.output`.

    The encoder is built on the CPU and Lightning moves it to each rank's device. Returns the store summary
    (output, count, failed, dim, shards, dtype) on global rank 0, None on the other ranks.
    """
    apply_extras(cfg)
    video = {"embedding": cfg.get("embedding"), "backend": cfg.get("backend", "decord")}
    encoder = load_encoder(cfg.encoder, device="cpu", dtype=cfg.precision, channels_last=cfg.channels_last,
                           random_init=bool(cfg.get("random_init", False)), **video)
    check_trainer(cfg.trainer)
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", logger=False, callbacks=[])
    options = {"batch_size": cfg.batch_size, "num_workers": loader_workers(cfg.num_workers), "dtype": cfg.dtype,
               "normalize": cfg.normalize, "max_failure_rate": cfg.max_failure_rate, "overwrite": cfg.overwrite,
               "encoder_source": str(cfg.encoder)}
    if is_shard_input(cfg.input):
        log.info("extracting WebDataset shards %s with %s (dim %d) into %s", cfg.input, encoder.name,
                 encoder.embed_dim, cfg.output)
        summary = run_shard_extraction(encoder, cfg.input, cfg.output, trainer, max_pixels=cfg.max_pixels, **options)
        if summary is not None:
            log.info("wrote %s", summary)
        return summary
    source = read_input(cfg.input, labels=cfg.labels)
    if source.kind == "labeled folder":
        line, warning = describe_labels(source.labels, f"the subfolders of input={cfg.input}")
        log.info("%s; labels=false to ignore them", line)
        if warning:
            log.warning(warning)
    processor = getattr(encoder, "processor", None)
    if processor is not None and source.titles:
        texts = [*source.titles, *(source.ocr or [])]
        message = coverage_warning(processor.tokenizer, texts, f"the titles and OCR of input={cfg.input}")
        if message:
            log.warning(message)
    log.info("extracting %d inputs (%s %s) with %s (dim %d) into %s",
             len(source), source.kind, cfg.input, encoder.name, encoder.embed_dim, cfg.output)
    summary = run_extraction(
        encoder,
        source,
        cfg.output,
        trainer,
        shard_size=cfg.shard_size,
        max_pixels=cfg.max_pixels,
        **options,
    )
    if summary is not None:
        log.info("wrote %s", summary)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="extract.yaml")
@short_errors("mmpretrain-extract")
def _hydra_main(cfg: DictConfig) -> None:
    """Hydra's entry: extract, then name the store."""
    summary = extract(cfg)
    if summary is not None:
        print_outputs("mmpretrain-extract", [summary["output"]])


def main(argv: list[str] | None = None) -> None:
    """Console entry: `--version`, `--help`, short errors and "did you mean" around Hydra."""
    run_hydra("mmpretrain-extract", "extract.yaml", _hydra_main, argv)


if __name__ == "__main__":
    main()
