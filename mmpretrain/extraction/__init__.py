"""Feature extraction at scale: Lightning predict over a folder, file list, manifest or WebDataset shards, into an
embedding store.

Two row sources feed one pipeline: :class:`InputSource` cuts a folder, file list or manifest into fixed chunks of
``shard_size`` rows (chunk ``i`` = store shard ``i``), :class:`ShardSource` makes input shard ``i`` store shard
``i``. Each rank streams every batch to part files under ``<output>/.extract/parts/`` (nothing is kept in memory);
a store shard is merged once its part files hold every one of its rows, and the run's end writes ``failed.jsonl``
and the manifest.

Resuming is the normal path, not a special mode: finished store shards are skipped, and ``.extract/run.json``
records the settings (encoder, its weights' sha256, preprocessing, input, shard size, dtype, ...) so a rerun with
other settings is refused instead of mixing two extractions in one store. One run at a time writes an output
(``.extract/lock``). Inputs that fail are left out of the store, never replaced, and listed in ``failed.jsonl``
with the reason; the run fails, keeping what it wrote for a rerun, when more than ``max_failure_rate`` of the
inputs are lost or when a loss cannot be counted: a run that lost data beyond what was allowed never exits 0.

Example:
    >>> import pytorch_lightning as pl, mmpretrain
    >>> from mmpretrain.extraction import read_input, run_extraction
    >>> trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)  # doctest: +SKIP
    >>> summary = run_extraction(mmpretrain.load_encoder("tiny_moby"), read_input("images/"), "store/",
    ...                          trainer)  # doctest: +SKIP
"""

from mmpretrain.extraction.inputs import ExtractionDataset, InputSource, read_input
from mmpretrain.extraction.pipeline import (
    EncoderPredictor,
    ExtractionDataModule,
    ExtractOptions,
    run_extraction,
    run_shard_extraction,
)
from mmpretrain.extraction.run import FAILED_FILE, RUN_DIR, ExtractionError, check_run
from mmpretrain.extraction.shards import ShardExtractionDataset, ShardSource, input_fingerprint, is_shard_input
from mmpretrain.extraction.sources import RowSource, row_item
from mmpretrain.extraction.writer import StoreWriter

__all__ = [
    "FAILED_FILE",
    "RUN_DIR",
    "EncoderPredictor",
    "ExtractOptions",
    "ExtractionDataModule",
    "ExtractionDataset",
    "ExtractionError",
    "InputSource",
    "RowSource",
    "ShardExtractionDataset",
    "ShardSource",
    "StoreWriter",
    "check_run",
    "input_fingerprint",
    "is_shard_input",
    "read_input",
    "row_item",
    "run_extraction",
    "run_shard_extraction",
]
