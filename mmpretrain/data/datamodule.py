"""LightningDataModules: unlabeled two-view images for SSL (plus labeled folders for the kNN monitor),
and labeled images for linear evaluation."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, ImageDataset, looks_grayscale
from mmpretrain.data.shards import (
    ImageShardDecoder,
    ShardDataset,
    expand_shards,
    shard_counts,
    shard_loader,
    shard_vocabulary,
)
from mmpretrain.data.sources import ImageSource, image_source, labeled_folder
from mmpretrain.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TwoViewTransform,
    ViewAugment,
    eval_transform,
    linear_train_transform,
    moby_transform,
)
from mmpretrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask, as under SLURM or taskset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def loader_workers(value: int | str | None, cap: int = 8) -> int:
    """DataLoader workers: an integer as given; `auto` (or None) one per available core, at most `cap`."""
    if value is None or str(value) == "auto":
        return min(cap, available_cpus())
    workers = int(value)
    if workers < 0:
        raise ConfigError(f"data.num_workers={value}: give 0 (load in the main process), a positive count or auto")
    return workers


def loader_pin_memory(value: bool | str | None) -> bool:
    """Pinned host memory only helps copies to a GPU: `auto` (or None) means "when CUDA is available"."""
    if value is None or str(value) == "auto":
        return torch.cuda.is_available()
    return bool(value)


def _refuse_moved(moved: Mapping[str, Any]) -> None:
    """An augmentation key at its former place (``data.blur_p``) names its new one (``data.view.blur_p``)."""
    if not moved:
        return
    key = sorted(moved)[0]
    if key in {f.name for f in fields(ViewAugment)}:
        raise ConfigError(f"data.{key} is now data.view.{key} (the views' settings moved into the data.view node)")
    raise ConfigError(f"data.{key} is not a key of SSLImageDataModule")


class SampledLoaders(pl.LightningDataModule):
    """Shared loader plumbing: an epoch-seeded sampler built here, so data order is reproducible on resume.

    Subclasses name what they load (``item_name``, for errors) and may turn persistent workers off when their
    dataset draws per-epoch randomness from ``set_epoch`` (a persistent worker would keep a stale copy).
    """

    item_name = "images"
    persistent_workers = True

    def __init__(self, batch_size: int, num_workers: int | str, seed: int, pin_memory: bool | str) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = loader_workers(num_workers)
        self.seed = seed
        self.pin_memory = loader_pin_memory(pin_memory)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _train_loader(self, dataset: Dataset, key: str, collate_fn: Callable | None = None) -> DataLoader:
        world, rank = self._world()
        if len(dataset) < self.batch_size * world:
            raise ConfigError(
                f"{key}: {len(dataset)} {self.item_name}, fewer than one global batch "
                f"(data.batch_size={self.batch_size} x {world} processes)"
            )
        sampler = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_fn,
        )

    def _eval_loader(self, dataset: Dataset, collate_fn: Callable | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate_fn,
        )


class SSLImageDataModule(SampledLoaders):
    """Unlabeled images (folder, recursive, file list, or WebDataset shards) in MoBY's two views; optional kNN
    monitor folders.

    ``shards`` (a brace pattern or list of URLs, see `mmpretrain.data.shards`) replaces ``root``/``file_list``;
    its epochs are an exact split with padding over ranks and workers, reshuffled per (seed, epoch).

    `max_failure_rate` and `min_attempts` configure the `DataHealthMonitor` callback that enforces them.
    The kNN monitor needs two labeled folders (one subfolder per class): `knn_train_root` is the feature bank
    and `knn_val_root` the queries. Validation then yields two loaders, bank first.

    ``view`` holds the augmentations of the two views (:class:`~mmpretrain.data.transforms.ViewAugment`, the
    ``data.view`` node of the config). `grayscale` (``auto``, true or false) drops hue and saturation jitter and the
    grayscale conversion for images without colour; ``auto`` looks at a sample of the training images in `setup` and
    logs what it found.
    """

    def __init__(
        self,
        root: str | None = None,
        file_list: str | None = None,
        shards: str | Sequence[str] | None = None,
        shuffle_buffer: int = 256,
        knn_train_root: str | None = None,
        knn_val_root: str | None = None,
        image_size: int = 224,
        view: ViewAugment | Mapping[str, Any] | None = None,
        grayscale: bool | str = "auto",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eval_crop_pct: float = 0.875,
        batch_size: int = 64,
        num_workers: int | str = "auto",
        max_redraws: int = 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        max_failure_rate: float = 0.01,
        min_attempts: int = 100,
        **moved: Any,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        _refuse_moved(moved)
        self.view = ViewAugment.of(view)
        self.save_hyperparameters(ignore=["view", "moved"])
        self.hparams["view"] = self.view.to_dict()
        self.root, self.file_list = root, file_list
        self.knn_roots = (knn_train_root, knn_val_root)
        if bool(knn_train_root) != bool(knn_val_root):
            raise ConfigError("set both data.knn_train_root and data.knn_val_root for the kNN monitor, or neither")
        if grayscale not in (True, False, "auto"):
            raise ConfigError(f"data.grayscale={grayscale!r}: expected auto, true or false")
        self.grayscale: bool | None = None if grayscale == "auto" else bool(grayscale)
        self.train_transform: TwoViewTransform | None = None
        self.eval_transform = eval_transform(image_size, eval_crop_pct, mean, std)
        self.mean, self.std = tuple(mean), tuple(std)
        self.shards = shards
        self.source: ImageSource | None = None
        self.shard_list: tuple[list[str], list[int]] | None = None
        self.knn_sources: tuple[ImageSource, ImageSource] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.shards and self.shard_list is None:
            urls = expand_shards(self.shards)
            self.shard_list = (urls, shard_counts(urls))
        elif not self.shards and self.source is None:
            self.source = image_source(self.root, self.file_list)
        if self.train_transform is None:
            self.train_transform = self._two_views()
        if not self.knn_roots[0]:
            log.info("kNN monitor off: data.knn_train_root and data.knn_val_root are not set")
        elif self.knn_sources is None:
            self.knn_sources = (
                labeled_folder(self.knn_roots[0], key="data.knn_train_root"),
                labeled_folder(self.knn_roots[1], key="data.knn_val_root"),
            )
            if self.knn_sources[0].classes != self.knn_sources[1].classes:
                raise ConfigError(
                    f"data.knn_train_root and data.knn_val_root have different classes: "
                    f"{self.knn_sources[0].classes} vs {self.knn_sources[1].classes}"
                )

    def _two_views(self) -> TwoViewTransform:
        """MoBY's two views; colour jitter limited to brightness and contrast for a grayscale data set."""
        if self.grayscale is None and self.source is None:
            self.grayscale = False
            log.info("data.grayscale=auto with data.shards: colour views (set data.grayscale=true for a grayscale set)")
        elif self.grayscale is None:
            self.grayscale = looks_grayscale(self.source.paths)
            log.info("data.grayscale=auto: the images look %s", "grayscale" if self.grayscale else "coloured")
        return moby_transform(self.hparams.image_size, self.view, self.mean, self.std, self.grayscale)

    def train_dataloader(self) -> DataLoader:
        if self.shard_list is not None:
            world, rank = self._world()
            decoder = ImageShardDecoder(self.train_transform, max_pixels=self.hparams.max_pixels)
            dataset = ShardDataset(*self.shard_list, decoder, self.batch_size, world, rank, self.num_workers,
                                   self.seed, shuffle_buffer=self.hparams.shuffle_buffer)
            return shard_loader(dataset, self.batch_size, self.pin_memory)
        dataset = ImageDataset(self.source.paths, self.train_transform, max_redraws=self.hparams.max_redraws,
                               max_pixels=self.hparams.max_pixels)
        return self._train_loader(dataset, f"data.root={self.root or self.file_list}")

    def val_dataloader(self) -> list[DataLoader]:
        if self.knn_sources is None:
            return []
        return [
            self._eval_loader(ImageDataset(s.paths, self.eval_transform, s.labels, self.hparams.max_redraws,
                                    self.hparams.max_pixels))
            for s in self.knn_sources
        ]


class LabeledImageDataModule(SampledLoaders):
    """Labeled train and val images for kNN and linear evaluation: the paper's RRC+flip train and resize+crop test.

    Two folders (one subfolder per class), or two sets of WebDataset shards: ``shards`` (train) and ``val_shards``,
    labelled by ``{key}.cls`` (a class index) or the ``label`` of ``{key}.json``, with the class list from their
    ``shards.json`` (see `mmpretrain.data.shards.shard_vocabulary`). Training shards are read as MoBY's (exact
    split with padding); evaluation reads every sample once.
    """

    def __init__(
        self,
        train_root: str | None = None,
        val_root: str | None = None,
        shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        shuffle_buffer: int = 256,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eval_crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        batch_size: int = 256,
        num_workers: int | str = "auto",
        max_redraws: int = 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        pin_memory: bool | str = "auto",
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.save_hyperparameters()
        self.train_transform = linear_train_transform(image_size, mean, std)
        self.eval_transform = eval_transform(image_size, eval_crop_pct, mean, std, interpolation)
        self.train_source: ImageSource | None = None
        self.val_source: ImageSource | None = None
        self.shard_lists: dict[str, tuple[list[str], list[int]]] = {}
        self.classes: list[str] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.classes is not None:
            return
        hp = self.hparams
        if bool(hp.shards) != bool(hp.val_shards):
            raise ConfigError(f"set both data.shards and data.val_shards (train and val shards), or neither "
                              f"(data.shards={hp.shards!r}, data.val_shards={hp.val_shards!r})")
        if not hp.shards and not (hp.train_root and hp.val_root):
            raise ConfigError("set data.train_root and data.val_root (labeled folders, one subfolder per class) or "
                              "data.shards and data.val_shards (labelled WebDataset shards)")
        if hp.shards:
            vocabularies = {}
            for key in ("shards", "val_shards"):
                urls = expand_shards(hp[key], key=f"data.{key}")
                self.shard_lists[key] = (urls, shard_counts(urls))
                vocabularies[key] = shard_vocabulary(urls, key=f"data.{key}")["classes"]
                if not vocabularies[key]:
                    raise DataError(f"data.{key}={hp[key]!r}: no sample has a label (a .cls member or a 'label' in "
                                    "its .json); write labelled shards with mmpretrain-shards from a folder with "
                                    "one subfolder per class")
            if vocabularies["shards"] != vocabularies["val_shards"]:
                raise ConfigError(f"data.shards and data.val_shards have different classes: "
                                  f"{vocabularies['shards']} vs {vocabularies['val_shards']}")
            self.classes = vocabularies["shards"]
            return
        self.train_source = labeled_folder(hp.train_root, key="data.train_root")
        self.val_source = labeled_folder(hp.val_root, key="data.val_root")
        if self.train_source.classes != self.val_source.classes:
            raise ConfigError(
                f"data.train_root and data.val_root have different classes: "
                f"{self.train_source.classes} vs {self.val_source.classes}"
            )
        self.classes = self.train_source.classes

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.classes)

    def _shards(self, key: str, transform: Callable, train: bool) -> DataLoader:
        world, rank = self._world() if train else (1, 0)
        decoder = ImageShardDecoder(transform, {name: i for i, name in enumerate(self.classes)},
                                    self.hparams.max_pixels)
        dataset = ShardDataset(*self.shard_lists[key], decoder, self.batch_size, world, rank, self.num_workers,
                               self.seed, train=train, pad=train, shuffle_buffer=self.hparams.shuffle_buffer,
                               key=f"data.{key}")
        return shard_loader(dataset, self.batch_size, self.pin_memory)

    def _images(self, source: ImageSource, transform: Callable) -> ImageDataset:
        return ImageDataset(source.paths, transform, source.labels, self.hparams.max_redraws, self.hparams.max_pixels)

    def train_dataloader(self) -> DataLoader:
        if self.shard_lists:
            return self._shards("shards", self.train_transform, train=True)
        dataset = self._images(self.train_source, self.train_transform)
        return self._train_loader(dataset, f"data.train_root={self.hparams.train_root}")

    def val_dataloader(self) -> DataLoader:
        if self.shard_lists:
            return self._shards("val_shards", self.eval_transform, train=False)
        return self._eval_loader(self._images(self.val_source, self.eval_transform))

    def eval_loaders(self) -> tuple[DataLoader, DataLoader]:
        """Both splits with the deterministic test pipeline: what kNN evaluation reads."""
        self.setup()
        if self.shard_lists:
            return tuple(self._shards(key, self.eval_transform, train=False) for key in ("shards", "val_shards"))
        sources = (self.train_source, self.val_source)
        return tuple(self._eval_loader(self._images(s, self.eval_transform)) for s in sources)
