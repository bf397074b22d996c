"""LightningDataModules: unlabeled two-view images for SSL (plus labeled folders for the kNN monitor),
and labeled images for linear evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, ImageDataset
from mmpretrain.data.sources import ImageSource, image_source, labeled_folder
from mmpretrain.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    linear_train_transform,
    moby_transform,
)


class SampledLoaders(pl.LightningDataModule):
    """Shared loader plumbing: an epoch-seeded sampler built here, so data order is reproducible on resume.

    Subclasses name what they load (``item_name``, for errors) and may turn persistent workers off when their
    dataset draws per-epoch randomness from ``set_epoch`` (a persistent worker would keep a stale copy).
    """

    item_name = "images"
    persistent_workers = True

    def __init__(self, batch_size: int, num_workers: int, seed: int, pin_memory: bool) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _train_loader(self, dataset: Dataset, key: str, collate_fn: Callable | None = None) -> DataLoader:
        world, rank = self._world()
        if len(dataset) < self.batch_size * world:
            raise ValueError(
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
    """Unlabeled images (folder, recursive, or file list) in MoBY's two views; optional kNN monitor folders.

    `max_failure_rate` and `min_attempts` configure the `DataHealthMonitor` callback that enforces them.
    The kNN monitor needs two labeled folders (one subfolder per class): `knn_train_root` is the feature bank
    and `knn_val_root` the queries. Validation then yields two loaders, bank first.
    """

    def __init__(
        self,
        root: str | None = None,
        file_list: str | None = None,
        knn_train_root: str | None = None,
        knn_val_root: str | None = None,
        image_size: int = 224,
        crop_scale: Sequence[float] = (0.08, 1.0),
        blur_p: Sequence[float] = (1.0, 0.1),
        solarize_p: Sequence[float] = (0.0, 0.2),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eval_crop_pct: float = 0.875,
        batch_size: int = 64,
        num_workers: int = 8,
        max_redraws: int = 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        pin_memory: bool = True,
        max_failure_rate: float = 0.01,
        min_attempts: int = 100,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.save_hyperparameters()
        self.root, self.file_list = root, file_list
        self.knn_roots = (knn_train_root, knn_val_root)
        if bool(knn_train_root) != bool(knn_val_root):
            raise ValueError("set both data.knn_train_root and data.knn_val_root for the kNN monitor, or neither")
        self.train_transform = moby_transform(
            image_size, tuple(crop_scale), tuple(blur_p), tuple(solarize_p), mean, std
        )
        self.eval_transform = eval_transform(image_size, eval_crop_pct, mean, std)
        self.mean, self.std = tuple(mean), tuple(std)
        self.source: ImageSource | None = None
        self.knn_sources: tuple[ImageSource, ImageSource] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.source is None:
            self.source = image_source(self.root, self.file_list)
        if self.knn_roots[0] and self.knn_sources is None:
            self.knn_sources = (
                labeled_folder(self.knn_roots[0], key="data.knn_train_root"),
                labeled_folder(self.knn_roots[1], key="data.knn_val_root"),
            )
            if self.knn_sources[0].classes != self.knn_sources[1].classes:
                raise ValueError(
                    f"data.knn_train_root and data.knn_val_root have different classes: "
                    f"{self.knn_sources[0].classes} vs {self.knn_sources[1].classes}"
                )

    def train_dataloader(self) -> DataLoader:
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
    """Two labeled folders (train, val) for linear evaluation: the paper's RRC+flip train and resize+crop test."""

    def __init__(
        self,
        train_root: str,
        val_root: str,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        eval_crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        batch_size: int = 256,
        num_workers: int = 8,
        max_redraws: int = 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.save_hyperparameters()
        self.train_transform = linear_train_transform(image_size, mean, std)
        self.eval_transform = eval_transform(image_size, eval_crop_pct, mean, std, interpolation)
        self.train_source: ImageSource | None = None
        self.val_source: ImageSource | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_source is None:
            self.train_source = labeled_folder(self.hparams.train_root, key="data.train_root")
            self.val_source = labeled_folder(self.hparams.val_root, key="data.val_root")
            if self.train_source.classes != self.val_source.classes:
                raise ValueError(
                    f"data.train_root and data.val_root have different classes: "
                    f"{self.train_source.classes} vs {self.val_source.classes}"
                )

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.train_source.classes)

    def train_dataloader(self) -> DataLoader:
        s = self.train_source
        dataset = ImageDataset(s.paths, self.train_transform, s.labels, self.hparams.max_redraws,
                                    self.hparams.max_pixels)
        return self._train_loader(dataset, f"data.train_root={self.hparams.train_root}")

    def val_dataloader(self) -> DataLoader:
        s = self.val_source
        return self._eval_loader(ImageDataset(s.paths, self.eval_transform, s.labels, self.hparams.max_redraws,
                                    self.hparams.max_pixels))

    def eval_loaders(self) -> tuple[DataLoader, DataLoader]:
        """Both splits with the deterministic test pipeline: what kNN evaluation reads."""
        self.setup()
        return tuple(
            self._eval_loader(ImageDataset(s.paths, self.eval_transform, s.labels, self.hparams.max_redraws,
                                    self.hparams.max_pixels))
            for s in (self.train_source, self.val_source)
        )
