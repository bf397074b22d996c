"""Labeled embeddings for few-shot evaluation: from an embedding store, or from an encoder and labeled images.

Both sources expose the labels first and the features on demand, so that a configuration the labels cannot
support (too few classes, classes too small for K+Q) is refused before any image is encoded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mmpretrain.data.shards import (
    SampleError,
    ShardError,
    class_index,
    expand_shards,
    read_shard,
    sample_image,
    shard_vocabulary,
)
from mmpretrain.data.sources import read_image_input
from mmpretrain.embeddings import open_store
from mmpretrain.errors import DataError

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder

__all__ = ["ImageInput", "LabeledInput", "ShardImageInput", "StoreInput"]


class LabeledInput(Protocol):
    """Rows with one label each; ``features()`` returns their ``(rows, dim)`` float32 embeddings in label order.

    ``where`` names the source as a config setting (``store=...``) for error messages and reports; ``encoder_name``
    records which encoder made (or makes) the embeddings.
    """

    labels: np.ndarray
    where: str
    encoder_name: str

    def features(self) -> np.ndarray: ...


class StoreInput:
    """An embedding store (image or video) whose metadata holds a label per row.

    Args:
        root: the store folder.
        column: the metadata column holding the class labels.
        key: the config key named in errors.

    Raises:
        StoreError: a missing or inconsistent store (see :func:`~mmpretrain.embeddings.open_store`).
        DataError: the store has no ``column``, or some rows lack a label.
    """

    def __init__(self, root: str | os.PathLike, column: str = "label", key: str = "store") -> None:
        self.store = open_store(root)
        self.where = f"{key}={os.fspath(root)}"
        self.encoder_name = self.store.encoder
        table = self.store.metadata()
        if column not in table.column_names:
            raise DataError(f"{self.where}: the embedding store has no {column!r} metadata column (columns: "
                            f"{', '.join(table.column_names)}); few-shot evaluation needs a class label per row. "
                            "Extract it from a labeled folder, file list or manifest, or evaluate with encoder=... "
                            "and data.root=... instead")
        labels = table.column(column)
        if labels.null_count:
            raise DataError(f"{self.where}: {labels.null_count} of {len(labels)} rows have no {column!r}; "
                            "few-shot evaluation needs a class label on every row")
        self.labels = labels.to_numpy(zero_copy_only=False)

    def features(self) -> np.ndarray:
        """All rows of the store, float32."""
        return self.store.embeddings()


class ImageInput:
    """Labeled images (a folder with one subfolder per class, a file list or a manifest) and the encoder to embed them.

    Features are the encoder's raw pooled outputs, not L2-normalised: each few-shot method applies its own
    normalisation, and SimpleShot's CL2N must center the raw features before normalising them.

    Args:
        encoder: the image encoder.
        source: the folder, file list or manifest (read by :func:`~mmpretrain.data.read_image_input`).
        batch_size: images per forward pass.
        key: the config key named in errors.

    Raises:
        MissingPathError / DataError / ConfigError: a missing source, one without images, or ``labels=true`` on
            one without labels, naming ``key``.
    """

    def __init__(
        self, encoder: ImageEncoder, source: str | os.PathLike, batch_size: int = 64, key: str = "data.root"
    ) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.images = read_image_input(Path(source), labels=True, key=key)
        self.where = f"{key}={os.fspath(source)}"
        self.encoder_name = encoder.name
        self.labels = np.asarray(self.images.labels)

    def features(self) -> np.ndarray:
        """Every image's embedding, in input order."""
        return self.encoder.encode_images(self.images.paths, batch_size=self.batch_size, normalize=False)


class ShardImageInput:
    """Labelled WebDataset shards and the encoder to embed their images, in shard order.

    Labels are the class names of ``{key}.cls`` class ids or of the ``label`` of ``{key}.json``, by the shards'
    class list (`mmpretrain.data.shards.shard_vocabulary`), as a labelled folder gives its subfolder names. The
    labels come from one read of the shards, the features from a second one.

    Raises:
        DataError: shards without labels, a sample without a usable label or image, or a damaged shard (few-shot
            episodes need every row), naming ``key`` and the sample.
    """

    def __init__(
        self, encoder: ImageEncoder, shards: str | list[str], batch_size: int = 64, key: str = "data.shards"
    ) -> None:
        self.encoder, self.batch_size, self.key = encoder, batch_size, key
        self.urls = expand_shards(shards, key=key)
        self.where = f"{key}={shards}"
        self.encoder_name = encoder.name
        self.classes = shard_vocabulary(self.urls, key)["classes"]
        if not self.classes:
            raise DataError(f"{self.where}: no sample has a label (a .cls member or a 'label' in its .json)")
        ids = {name: i for i, name in enumerate(self.classes)}
        self.keys, labels = [], []
        for raw in self._samples():
            labels.append(self.classes[self._checked(lambda r=raw: class_index(r, ids), raw)])
            self.keys.append(raw["__key__"])
        self.labels = np.asarray(labels)  # class names, as a labelled folder gives them

    def _samples(self):
        for url in self.urls:
            for raw in read_shard(url):
                if isinstance(raw, ShardError):
                    raise DataError(f"{self.where}: shard {url} is damaged ({raw.reason}: {raw.detail})")
                yield raw

    def _checked(self, read, raw: dict):
        try:
            return read()
        except SampleError as err:
            raise DataError(f"{self.where}: sample {raw['__key__']} of {raw['__url__']}: {err}") from err

    def features(self) -> np.ndarray:
        """Every sample's embedding (raw, as `ImageInput`), in label order."""
        parts, batch, position = [], [], 0
        for raw in self._samples():
            if position >= len(self.keys) or raw["__key__"] != self.keys[position]:
                raise DataError(f"{self.where}: the shards changed between reading the labels and the images")
            batch.append(self._checked(lambda r=raw: sample_image(r), raw))
            position += 1
            if len(batch) == self.batch_size:
                parts.append(self.encoder.encode_images(batch, batch_size=self.batch_size, normalize=False))
                batch = []
        if batch:
            parts.append(self.encoder.encode_images(batch, batch_size=self.batch_size, normalize=False))
        if position != len(self.keys):
            raise DataError(f"{self.where}: the shards changed between reading the labels and the images")
        return np.concatenate(parts)
