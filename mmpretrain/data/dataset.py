"""Image datasets that skip unreadable files instead of crashing a worker, and report how many they skipped."""

from __future__ import annotations

import logging
import os
import random
import stat
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


#: Default pixel cap (width x height) checked from the header before decoding: 64 MP, about 200 MB as RGB.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageReadError(ValueError):
    """An image input refused before decoding (not a regular file, or more pixels than allowed); names the file."""


def load_rgb(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB; truncated files raise here rather than later in a transform.

    Only regular files are opened (a FIFO named ``x.png`` would block the reader forever), and the pixel count is
    read from the header first: a small PNG can ask for gigabytes once decoded.

    Raises:
        ImageReadError: not a regular file, or ``width * height > max_pixels`` (``None``: no cap).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read: {err.strerror}") from err
    if not stat.S_ISREG(mode):
        raise ImageReadError(f"{path}: not a regular file (a FIFO, device, socket or folder); refusing to read it")
    with Image.open(path) as img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageReadError(f"{path}: {width}x{height} = {width * height} pixels is more than max_pixels="
                                 f"{max_pixels}; raise the cap (data.max_pixels / max_pixels) to read it")
        img.load()
        return img.convert("RGB")


class ImageDataset(Dataset):
    """Images from a list of paths; a file that fails to decode is replaced by a re-draw of another file.

    Each sample carries `failed`, the number of files that failed before it loaded, so the count reaches
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
        candidate, failed = index, 0
        while True:
            path = self.paths[candidate]
            try:
                image = load_rgb(path, self.max_pixels)
            except Exception as err:  # PIL raises many exception types for bad files
                failed += 1
                log.warning("skipping unreadable image %s: %s: %s", path, type(err).__name__, err)
                if failed > self.max_redraws:
                    raise RuntimeError(
                        f"{failed} unreadable images in a row while loading sample {index} (last: {path}); "
                        "is the data folder mostly corrupt?"
                    ) from err
                candidate = rng.randrange(len(self.paths))
                continue
            sample: dict[str, Any] = {"index": candidate, "failed": failed}
            out = self.transform(image)
            if isinstance(out, tuple | list):
                sample["views"] = list(out)
            else:
                sample["image"] = out
            if self.labels is not None:
                sample["label"] = self.labels[candidate]
            return sample
