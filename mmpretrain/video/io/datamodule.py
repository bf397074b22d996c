"""Video manifests as Lightning data: decoded (or pre-extracted) clips plus tokenized title and OCR."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from mmpretrain.data.datamodule import SampledLoaders
from mmpretrain.data.shards import ShardDataset, expand_shards, shard_counts, shard_loader, shard_vocabulary
from mmpretrain.errors import ConfigError, DataError, MissingPathError
from mmpretrain.models import create_tokenizer, tokenizer_from_json
from mmpretrain.video.io.dataset import ClipReader, SampleVocab, VideoTextDataset, collate_videos
from mmpretrain.video.io.manifest import VideoRecord, label_vocab, read_video_manifest, tag_vocab
from mmpretrain.video.io.shards import VideoShardDecoder
from mmpretrain.video.train.text import TextProcessor

log = logging.getLogger(__name__)

#: ``data.tokenizer=model``: the tokenizer of the model being trained (its text model's, or a trained vocabulary)
MODEL_TOKENIZER = "model"


def load_tokenizer(name: str, key: str = "data.tokenizer") -> Any:
    """A tokenizer by transformers name/path/``pkg://``, or the one stored in a video checkpoint of this project.

    Fine-tuning must tokenize exactly as pretraining did; a checkpoint (``.ckpt``, ``.safetensors``, a published
    folder) carries its tokenizer, so ``data.tokenizer=${model.pretrained}`` needs nothing else.
    """
    path = Path(name).expanduser()
    if path.suffix in (".ckpt", ".safetensors") or (path / "model.safetensors").is_file():
        from mmpretrain.hub import load_checkpoint

        config = load_checkpoint(path).config
        if "tokenizer" not in config:
            raise ConfigError(f"{key}={name}: this checkpoint carries no tokenizer (not a video model)")
        return tokenizer_from_json(config["tokenizer"])
    return create_tokenizer(name, key)


class VideoCollator:
    """Stack clips and tokenize their text in the worker, so the main process only moves tensors."""

    def __init__(self, processor: TextProcessor) -> None:
        self.processor = processor

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate_videos(samples)
        batch["text"] = self.processor(batch["title"], batch["ocr"])
        return batch


def split_records(records: Sequence[VideoRecord], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random hold-out of ``fraction`` of the records (at least one), for a manifest without a val split."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction} must be in (0, 1) when data.val_manifest is not set")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * fraction))
    val = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


def labels_per_class(records: Sequence[VideoRecord], per_class: int, seed: int) -> list[VideoRecord]:
    """A label budget: ``per_class`` records of every label, drawn with ``seed`` (records without a label dropped), in
    manifest order, so a learning curve measures what a few labelled videos buy.

    Raises:
        ConfigError: ``per_class`` < 1, no record has a label, or a class has fewer records than asked, naming
            ``data.labels_per_class``.
    """
    if per_class < 1:
        raise ConfigError(f"data.labels_per_class={per_class} must be >= 1 (null keeps every label)")
    rows: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        if record.label is not None:
            rows.setdefault(record.label, []).append(i)
    if not rows:
        raise ConfigError(f"data.labels_per_class={per_class} but no training record has a 'label'")
    rng = random.Random(seed)
    kept: set[int] = set()
    for name in sorted(rows):
        if len(rows[name]) < per_class:
            raise ConfigError(f"data.labels_per_class={per_class} but class {name!r} has {len(rows[name])} training "
                              "records")
        kept.update(rng.sample(rows[name], per_class))
    return [r for i, r in enumerate(records) if i in kept]


class VideoDataModule(SampledLoaders):
    """Train/val video–text data from JSON Lines (or CSV) manifests (DESIGN §3).

    Args:
        train_manifest: the training manifest; val_manifest: a held-out one, else ``val_fraction`` of train.
        tokenizer: ``model`` (the tokenizer of the model this data trains, see :meth:`follow`), a transformers
            tokenizer (name, path, ``pkg://``), or a video checkpoint whose tokenizer to use (fine-tuning);
            max_text_len / max_title_len: lengths.
        num_frames / image_size / sampling / stride: clip sampling (segment-based or fixed stride); ``image_size``
            ``None``: the model's frame size (:meth:`follow`).
        backend / pyav_mode: decoding (decord with PyAV fallback, or PyAV only).
        frames_dir / val_frames_dir: pre-extracted frame shards (``python -m mmpretrain.cli.prepare_frames``) instead
            of decoding.
        crop_scale: random resized crop area range for training clips (same crop for every frame).
        with_labels / with_tags: add class indices / multi-hot tags from the manifest (fine-tuning), or from the
            shards' ``.json`` ``label`` / ``tags`` with the class and tag lists of their ``shards.json``.
        labels_per_class: train on this many records of each label (drawn with ``labels_seed``, default ``seed``)
            and leave the rest out: a label budget for few-label fine-tuning; manifests only.
        shards / val_shards: WebDataset shards in video2dataset's layout instead of the manifests (see
            `mmpretrain.video.io.shards`; epochs as in `mmpretrain.data.shards`); no validation without ``val_shards``.
            ``require_caption``: a sample without a caption (``.txt`` or the json's ``caption``) is skipped and counted
            as ``missing_caption``; false keeps it (frames only, as modality dropout trains for).
            shuffle_buffer: samples per shuffle buffer.
        max_redraws / max_failure_rate / min_attempts: unreadable videos are re-drawn, counted, and abort the run
            past the failure rate (read by the ``data_health`` callback).
    """

    item_name = "videos"
    persistent_workers = False

    def __init__(
        self,
        train_manifest: str | None = None,
        val_manifest: str | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "bert-base-uncased",
        max_text_len: int = 64,
        max_title_len: int | None = None,
        num_frames: int = 8,
        image_size: int | None = 224,
        sampling: str = "segment",
        stride: int = 4,
        backend: str = "decord",
        pyav_mode: str = "auto",
        frames_dir: str | None = None,
        val_frames_dir: str | None = None,
        crop_scale: Sequence[float] = (0.6, 1.0),
        with_labels: bool = False,
        with_tags: bool = False,
        labels_per_class: int | None = None,
        labels_seed: int | None = None,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        max_redraws: int = 10,
        seed: int = 0,
        max_failure_rate: float = 0.01,
        min_attempts: int = 100,
        shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        shuffle_buffer: int = 64,
        require_caption: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.save_hyperparameters(logger=False)
        self.shard_lists: dict[str, tuple[list[str], list[int]]] = {}
        self.train_records: list[VideoRecord] = []
        self.val_records: list[VideoRecord] = []
        self.labels: list[str] | None = None
        self.tags: list[str] | None = None
        self._processor: TextProcessor | None = None

    @property
    def processor(self) -> TextProcessor:
        if self._processor is None:
            hp = self.hparams
            if hp.tokenizer == MODEL_TOKENIZER:
                raise ConfigError("data.tokenizer=model takes the tokenizer of the model being trained, and this data "
                                  "module has none: train with trainer.fit(model, datamodule=...) or call "
                                  "datamodule.follow(model), or name a tokenizer")
            self._processor = TextProcessor(load_tokenizer(hp.tokenizer), hp.max_text_len, hp.max_title_len)
        return self._processor

    def follow(self, module: Any) -> None:
        """Read the data as ``module`` does: its tokenizer when ``data.tokenizer=model`` (the text model's own, or
        the vocabulary ``model.tokenizer=train`` learned) and its frame size when ``data.image_size`` is null
        (``model.image_size``, or the size of ``model.frame_init``). Training calls it at setup.

        Raises:
            ConfigError: ``module`` has no tokenizer or frame size to give.
        """
        hp = self.hparams
        if hp.tokenizer == MODEL_TOKENIZER:
            tokenizer = getattr(module, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError(f"data.tokenizer=model but {type(module).__name__} has no tokenizer; name one")
            self._processor = TextProcessor(tokenizer, hp.max_text_len, hp.max_title_len)
        if hp.image_size is None:
            size = getattr(getattr(module, "model", None), "image_size", None)
            if size is None:
                raise ConfigError(f"data.image_size=null but {type(module).__name__} has no frame size; set it")
            hp.image_size = int(size)
            log.info("data.image_size=%d: the model's frame size", hp.image_size)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and (hp.tokenizer == MODEL_TOKENIZER or hp.image_size is None):
            self.follow(module)
        if hp.shards and hp.labels_per_class is not None:
            raise ConfigError("data.labels_per_class needs a training manifest (data.train_manifest), not data.shards")
        if hp.shards:
            for key in ("shards", "val_shards"):
                if hp[key] and key not in self.shard_lists:
                    urls = expand_shards(hp[key], key=f"data.{key}")
                    self.shard_lists[key] = (urls, shard_counts(urls))
            if (hp.with_labels and self.labels is None) or (hp.with_tags and self.tags is None):
                self._shard_vocabularies()
            return
        if self.train_records:
            return
        if not hp.train_manifest:
            raise ConfigError("set data.train_manifest (a video manifest) or data.shards (WebDataset shards)")
        for key in ("train_manifest", "val_manifest"):
            value = hp[key]
            if value is not None and not Path(value).is_file():
                raise MissingPathError(f"data.{key}={value!r} does not exist")
        records = read_video_manifest(hp.train_manifest)
        if hp.val_manifest:
            self.train_records, self.val_records = records, read_video_manifest(hp.val_manifest)
        else:
            self.train_records, self.val_records = split_records(records, hp.val_fraction, hp.seed)
        everything = self.train_records + self.val_records
        if hp.labels_per_class is not None:
            seed = hp.seed if hp.labels_seed is None else hp.labels_seed
            self.train_records = labels_per_class(self.train_records, hp.labels_per_class, seed)
            log.info("data.labels_per_class=%d: %d training videos", hp.labels_per_class, len(self.train_records))
        if hp.with_labels:
            self.labels = label_vocab(everything)
            if not self.labels:
                raise ConfigError(f"data.with_labels=true but no record of {hp.train_manifest} has a 'label'")
        if hp.with_tags:
            self.tags = tag_vocab(everything)
            if not self.tags:
                raise ConfigError(f"data.with_tags=true but no record of {hp.train_manifest} has 'tags'")

    def _shard_vocabularies(self) -> None:
        """Class and tag lists of the train and val shards together, as a manifest's are of all its records: from
        their ``shards.json``, or one read of their ``.json`` members (`shard_vocabulary`)."""
        hp = self.hparams
        urls = [u for key in ("shards", "val_shards") if key in self.shard_lists for u in self.shard_lists[key][0]]
        where = f"data.shards={hp.shards!r}" + (f" / data.val_shards={hp.val_shards!r}" if hp.val_shards else "")
        vocabulary = shard_vocabulary(urls, key="data.shards")
        if hp.with_labels:
            self.labels = vocabulary["classes"]
            if not self.labels:
                raise DataError(f"data.with_labels=true but no sample of {where} has a 'label' in its .json "
                                "(video2dataset metadata, or mmpretrain-shards from a manifest with labels)")
        if hp.with_tags:
            self.tags = vocabulary["tags"]
            if not self.tags:
                raise DataError(f"data.with_tags=true but no sample of {where} has 'tags' in its .json")

    def _size(self) -> tuple[int, int]:
        size = self.hparams.image_size
        if size is None:
            raise ConfigError("data.image_size=null takes the frame size of the model being trained, and this data "
                              "module has none: train with trainer.fit(model, datamodule=...) or call "
                              "datamodule.follow(model), or set data.image_size")
        return int(size), int(size)

    def dataset(self, records: Sequence[VideoRecord], train: bool, frames_dir: str | None) -> VideoTextDataset:
        hp = self.hparams
        return VideoTextDataset(
            records,
            num_frames=hp.num_frames,
            size=self._size(),
            train=train,
            sampling=hp.sampling,
            stride=hp.stride,
            backend=hp.backend,
            pyav_mode=hp.pyav_mode,
            frames_dir=frames_dir,
            crop_scale=tuple(hp.crop_scale) if train else (1.0, 1.0),
            labels=self.labels,
            tags=self.tags,
            max_redraws=hp.max_redraws,
            seed=hp.seed,
        )

    def shard_dataset(self, key: str, train: bool) -> ShardDataset:
        """The shards under ``data.<key>`` as clips: training crops and pads, evaluation reads each sample once."""
        hp = self.hparams
        reader = ClipReader(hp.num_frames, self._size(), train, hp.sampling, hp.stride, hp.backend,
                            hp.pyav_mode, tuple(hp.crop_scale) if train else (1.0, 1.0))
        world, rank = self._world()
        decoder = VideoShardDecoder(reader, SampleVocab(self.labels, self.tags), hp.seed, hp.require_caption)
        return ShardDataset(*self.shard_lists[key], decoder, self.batch_size, world, rank, self.num_workers, hp.seed,
                            train=train, pad=train, shuffle_buffer=hp.shuffle_buffer, key=f"data.{key}")

    def train_dataloader(self) -> DataLoader:
        if self.hparams.shards:
            return shard_loader(self.shard_dataset("shards", True), self.batch_size, self.pin_memory,
                                VideoCollator(self.processor))
        dataset = self.dataset(self.train_records, True, self.hparams.frames_dir)
        return self._train_loader(dataset, "data.train_manifest", VideoCollator(self.processor))

    def val_dataloader(self) -> DataLoader | list:
        if self.hparams.shards:
            if "val_shards" not in self.shard_lists:
                return []
            return shard_loader(self.shard_dataset("val_shards", False), self.batch_size, self.pin_memory,
                                VideoCollator(self.processor))
        dataset = self.dataset(self.val_records, False, self.hparams.val_frames_dir)
        return self._eval_loader(dataset, VideoCollator(self.processor))
