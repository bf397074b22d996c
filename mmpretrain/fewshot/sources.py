"""Where a few-shot application's pictures come from, and their embeddings.

A support set is a labelled folder (one subfolder per class), a file list with a label column, a manifest with
``label`` fields, labelled WebDataset shards or an embedding store with a ``label`` column. What a fitted
classifier reads (``predict``, ``suggest``) is the same without labels: a folder, a file list, a manifest, shards,
a list of image files, or (for ``suggest``) an embedding store made with the classifier's encoder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mmpretrain.data import ShardError
from mmpretrain.data.shards import SampleError, expand_shards, read_shard, sample_image
from mmpretrain.data.sources import IMAGE_EXTENSIONS, read_image_input
from mmpretrain.embeddings import MANIFEST
from mmpretrain.errors import ConfigError, DataError, MissingPathError
from mmpretrain.fewshot.inputs import ImageInput, ShardImageInput, StoreInput

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder

__all__ = [
    "ImageRows", "Labeled", "is_shards", "is_store", "labeled_support", "open_picture", "read_rows",
]


def is_store(source: Any) -> bool:
    """An embedding store folder (it holds ``manifest.json``)."""
    return isinstance(source, str | os.PathLike) and (Path(source).expanduser() / MANIFEST).is_file()


def is_shards(source: Any) -> bool:
    """WebDataset shards: a ``.tar`` file, a brace pattern of them, or several separated by spaces."""
    return isinstance(source, str) and any(part.endswith(".tar") for part in source.replace("}", " ").split())


@dataclass
class Labeled:
    """A labelled support set: ``features`` (rows, dim) float32 (raw, or L2-normalised rows from a store made with
    ``normalize=true``: ``normalized``), one label, id and path (None: from shards or a store without paths) per
    row, and what the rows came from."""

    features: np.ndarray
    labels: np.ndarray
    ids: list[str]
    paths: list[str | None]
    where: str
    normalized: bool = False


def labeled_support(source: str | os.PathLike, encoder: ImageEncoder | None, key: str = "support",
                    batch_size: int = 64) -> Labeled:
    """Embed (or, from a store, read) a labelled support set.

    Args:
        source: a labelled folder, file list, manifest, shards or an embedding store.
        encoder: embeds the images; ``None`` only for a store.
        key: the config key named in errors.

    Raises:
        ConfigError / MissingPathError / DataError: a source without labels or images, naming ``key``.
    """
    if is_store(source):
        data = StoreInput(source, key=key)
        meta = data.store.metadata()
        ids = [str(i) for i in meta.column("id").to_pylist()]
        paths = meta.column("path").to_pylist() if "path" in meta.column_names else [None] * len(ids)
        features = data.features()
        if encoder is not None and features.shape[1] != encoder.embed_dim:
            raise ConfigError(f"{key}={source}: the store holds {features.shape[1]}-d embeddings ({data.encoder_name}) "
                              f"but encoder={encoder.name} gives {encoder.embed_dim}-d ones")
        return Labeled(np.asarray(features, dtype=np.float32), np.asarray(data.labels).astype(str), ids, paths,
                       data.where, bool(data.store.normalized))
    if encoder is None:
        raise ConfigError(f"{key}={source}: images need an encoder=<checkpoint, timm:<model> or pixels>")
    if is_shards(str(source)):
        expand_shards(str(source), key=key)  # a missing shard: one line naming it, before any work
        shards = ShardImageInput(encoder, str(source), batch_size=batch_size, key=key)
        return Labeled(shards.features(), shards.labels.astype(str), list(shards.keys), [None] * len(shards.keys),
                       shards.where)
    images = ImageInput(encoder, source, batch_size=batch_size, key=key)
    return Labeled(images.features(), images.labels.astype(str), list(images.images.ids),
                   list(images.images.paths), images.where)


@dataclass
class ImageRows:
    """Unlabelled pictures to classify: ids and paths (None inside shards), read in batches by :meth:`batches`."""

    ids: list[str]
    paths: list[str | None]
    shards: list[str]
    where: str

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, size: int) -> Iterator[tuple[int, list[Any]]]:
        """``(start row, images)``: paths for files, decoded PIL images for shard samples."""
        if not self.shards:
            for start in range(0, len(self.paths), size):
                yield start, self.paths[start:start + size]
            return
        batch, start = [], 0
        for raw in _shard_samples(self.shards, self.where):
            try:
                batch.append(sample_image(raw))
            except SampleError as err:
                raise DataError(f"{self.where}: sample {raw['__key__']} of {raw['__url__']}: {err}") from err
            if len(batch) == size:
                yield start, batch
                start, batch = start + size, []
        if batch:
            yield start, batch

    def pictures(self, rows: Sequence[int]) -> list[Image.Image | None]:
        """The pictures of some rows, in that order (for contact sheets); None where one cannot be read."""
        if not self.shards:
            return [open_picture(self.paths[r]) for r in rows]
        wanted = {self.ids[r]: i for i, r in enumerate(rows)}
        found: list[Image.Image | None] = [None] * len(rows)
        for raw in _shard_samples(self.shards, self.where):
            if raw["__key__"] in wanted:
                with contextlib.suppress(SampleError):
                    found[wanted[raw["__key__"]]] = sample_image(raw)
        return found


def open_picture(path: str | None) -> Image.Image | None:
    """The RGB picture at ``path``, or None when there is none or it cannot be read (a contact sheet's grey tile)."""
    if not path:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError:
        return None


def _shard_samples(urls: Sequence[str], where: str) -> Iterator[dict[str, Any]]:
    for url in urls:
        for raw in read_shard(url):
            if isinstance(raw, ShardError):
                raise DataError(f"{where}: shard {url} is damaged ({raw.reason}: {raw.detail})")
            yield raw


def read_rows(source: str | os.PathLike | Sequence[str | os.PathLike], key: str = "input") -> ImageRows:
    """The pictures of a folder (recursive), file list, manifest, shards, or a list of image files.

    Raises:
        ConfigError / MissingPathError: a missing source, or one without images, naming ``key``.
    """
    if isinstance(source, list | tuple):
        paths = [Path(p).expanduser() for p in source]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MissingPathError(f"{key}: {len(missing)} of {len(paths)} files do not exist (first: {missing[0]})")
        if not paths:
            raise ConfigError(f"{key}: the list of images is empty")
        return ImageRows([p.name for p in paths], [str(p.absolute()) for p in paths], [], f"{key}=[...]")
    if Path(source).suffix.lower() in IMAGE_EXTENSIONS:
        return read_rows([source], key)
    if is_shards(str(source)):
        urls = expand_shards(str(source), key=key)
        ids = [raw["__key__"] for raw in _shard_samples(urls, f"{key}={source}")]
        if not ids:
            raise DataError(f"{key}={source}: the shards hold no samples")
        return ImageRows(ids, [None] * len(ids), urls, f"{key}={source}")
    rows = read_image_input(source, labels="auto", key=key)
    return ImageRows(list(rows.ids), list(rows.paths), [], f"{key}={os.fspath(source)}")
