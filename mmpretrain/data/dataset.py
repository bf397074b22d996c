"""Image datasets that skip unreadable files instead of crashing a worker, and report how many they skipped."""

from __future__ import annotations

import io
import logging
import os
import random
import stat
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from mmpretrain.errors import DataError

log = logging.getLogger(__name__)


#: Default pixel cap (width x height) checked from the header before decoding: 64 MP, about 200 MB as RGB.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageReadError(DataError):
    """An image input refused before decoding (not a regular file, or more pixels than allowed); names the file.

    ``reason`` is the short name the health monitor counts it under (``unreadable_file``, ``too_many_pixels``).
    """

    def __init__(self, message: str, reason: str = "unreadable_file") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple:
        return type(self), (self.args[0], self.reason)


def failure_reason(err: BaseException) -> str:
    """What an image that could not be read is counted as, from a file or from a shard alike: the refusal's reason
    (:class:`ImageReadError`), else ``undecodable_image``."""
    return err.reason if isinstance(err, ImageReadError) else "undecodable_image"


def open_image(source: str | io.BytesIO, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image (a path, or bytes from a shard) without decoding it, after the checks that must come first.

    Only regular files are opened (a FIFO named ``x.png`` would block the reader forever), and the pixel count is
    read from the header: a small PNG can ask for gigabytes once decoded.

    Raises:
        ImageReadError: not a regular file, or ``width * height > max_pixels`` (``None``: no cap).
    """
    if not isinstance(source, io.BytesIO):
        try:
            mode = os.stat(source).st_mode
        except OSError as err:
            raise ImageReadError(f"{source}: cannot read: {err.strerror}") from err
        if not stat.S_ISREG(mode):
            raise ImageReadError(f"{source}: not a regular file (a FIFO, device, socket or folder); not read")
    img = Image.open(source)
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageReadError(f"{source}: {width}x{height} = {width * height} pixels is more than max_pixels="
                             f"{max_pixels}; raise the cap (data.max_pixels / max_pixels) to read it",
                             "too_many_pixels")
    return img


def load_rgb(source: str | io.BytesIO, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB; truncated files raise here rather than later in a transform.

    Raises:
        ImageReadError: see :func:`open_image`.
    """
    with open_image(source, max_pixels) as img:
        img.load()
        return img.convert("RGB")


def transform_file(
    source: str | io.BytesIO, transform: Callable[[Image.Image], Any], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Any:
    """Decode and transform one image. A transform marked ``lazy`` (MoBY's two views) gets the image opened (and
    checked, see :func:`open_image`) but not loaded, so it can decode a JPEG at reduced size; decoding errors surface
    from either path."""
    if getattr(transform, "lazy", False):
        with open_image(source, max_pixels) as img:
            return transform(img)
    return transform(load_rgb(source, max_pixels))


class ImageDataset(Dataset):
    """Images from a list of paths; a file that fails to decode is replaced by a re-draw of another file.

    Each sample carries `failed`, the number of files that failed before it loaded (and `failed_reasons`, their
    reasons by :func:`failure_reason`, comma-separated), so the count reaches
    the main process through the batch whatever the number of DataLoader workers; `DataHealthMonitor`
    sums it and aborts past a failure rate. Re-draws are seeded by the index, so they are reproducible.

    Args:
        paths: image files.
        transform: PIL image -> tensor (or tuple of tensors for multi-view SSL).
        labels: optional integer label per path.
        max_redraws: how many other files to try before giving up on a sample.
        max_pixels: images with more pixels are refused from their header (see :func:`load_rgb`).
    """

    def __init__(
        self,
        paths: Sequence[str],
        transform: Callable[[Image.Image], Any],
        labels: Sequence[int] | None = None,
        max_redraws: int = 20,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = None if labels is None else list(labels)
        self.transform = transform
        self.max_redraws = max_redraws
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = random.Random(index)
        candidate, failed, reasons = index, 0, []
        while True:
            path = self.paths[candidate]
            try:
                out = transform_file(path, self.transform, self.max_pixels)
            except Exception as err:  # PIL raises many exception types for bad files
                failed += 1
                reasons.append(failure_reason(err))
                log.warning("skipping unreadable image %s: %s: %s", path, type(err).__name__, err)
                if failed > self.max_redraws:
                    raise RuntimeError(
                        f"{failed} unreadable images in a row while loading sample {index} (last: {path}); "
                        "is the data folder mostly corrupt?"
                    ) from err
                candidate = rng.randrange(len(self.paths))
                continue
            sample: dict[str, Any] = {"index": candidate, "failed": failed, "failed_reasons": ",".join(reasons)}
            if isinstance(out, tuple | list):
                sample["views"] = list(out)
            else:
                sample["image"] = out
            if self.labels is not None:
                sample["label"] = self.labels[candidate]
            return sample


def looks_grayscale(paths: Sequence[str], sample: int = 32) -> bool:
    """True when every image of an evenly spaced sample of ``paths`` has no colour.

    A file counts as grayscale when PIL opens it in a single-channel mode (``1``, ``L``, ``LA``, ``I``, ``F``...) or
    its three channels are equal everywhere. Unreadable files are left to the dataset, which skips them.
    """
    step = max(len(paths) // sample, 1)
    seen = 0
    for path in list(paths)[::step][:sample]:
        try:
            with Image.open(path) as img:
                if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
                    seen += 1
                    continue
                rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
        except Exception:  # PIL raises many types; the dataset reports bad files
            continue
        if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
            return False
        seen += 1
    return seen > 0
