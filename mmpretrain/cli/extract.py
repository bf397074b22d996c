"""`mmpretrain-extract encoder=<name|path|url> input=<folder|file list|manifest> output=<dir>`: an embedding store."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from mmpretrain.cli.utils import apply_extras, task_wrapper
from mmpretrain.encoders import load_encoder
from mmpretrain.extraction import read_input, run_extraction

log = logging.getLogger(__name__)


@task_wrapper
def extract(cfg: DictConfig) -> dict[str, Any] | None:
    """Load the encoder, read the input and run Lightning predict into the store at `cfg.output`.

    The encoder is built on the CPU and Lightning moves it to each rank's device. Returns the store summary
    (output, count, failed, dim, shards, dtype) on global rank 0, None on the other ranks.
    """
    apply_extras(cfg)
    video = {"embedding": cfg.get("embedding"), "backend": cfg.get("backend", "decord")}
    encoder = load_encoder(cfg.encoder, device="cpu", dtype=cfg.precision, channels_last=cfg.channels_last, **video)
    source = read_input(cfg.input, labels=cfg.labels)
    log.info("extracting %d inputs (%s %s) with %s (dim %d) into %s",
             len(source), source.kind, cfg.input, encoder.name, encoder.embed_dim, cfg.output)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    summary = run_extraction(
        encoder,
        source,
        cfg.output,
        trainer,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        shard_size=cfg.shard_size,
        dtype=cfg.dtype,
        normalize=cfg.normalize,
        max_failure_rate=cfg.max_failure_rate,
        overwrite=cfg.overwrite,
        encoder_source=str(cfg.encoder),
        max_pixels=cfg.max_pixels,
    )
    if summary is not None:
        log.info("wrote %s", summary)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="extract.yaml")
def main(cfg: DictConfig) -> None:
    """Console entry."""
    extract(cfg)


if __name__ == "__main__":
    main()
