"""Where images come from: an unlabeled folder (recursive), a file list, or a labeled folder (a subfolder per class)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
)


@dataclass
class ImageSource:
    """A list of image paths, optional integer labels with their class names, and what the scan skipped."""

    paths: list[str]
    labels: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _require_dir(root: str | os.PathLike, key: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{key}={root}: folder does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{key}={root}: not a folder")
    return path


def _report(source: ImageSource, where: str, key: str) -> ImageSource:
    if source.skipped:
        log.warning("%s: skipped %d files without an image extension", where, source.skipped)
    if not source.paths:
        raise ValueError(f"{key}={where}: no images found ({source.skipped} non-image files skipped)")
    return source


def scan_images(root: str | os.PathLike, recursive: bool = True, key: str = "data.root") -> ImageSource:
    """All image files under `root`, sorted so the order (and so every seeded sample) is reproducible."""
    path = _require_dir(root, key)
    paths, skipped = [], 0
    walker = os.walk(path, followlinks=True) if recursive else [(str(path), [], os.listdir(path))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if not os.path.isfile(full):
                continue
            if _is_image(name):
                paths.append(full)
            else:
                skipped += 1
    return _report(ImageSource(sorted(paths), skipped=skipped), str(root), key)


def read_file_list(list_file: str | os.PathLike, key: str = "data.file_list") -> ImageSource:
    """Paths from a text file, one per line (`#` comments and blank lines ignored), relative to the file's folder.

    An optional second tab-separated column is a class name, which makes the source labeled.
    """
    path = Path(list_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={list_file}: file does not exist")
    paths, names, skipped = [], [], 0
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise ValueError(f"{list_file}:{lineno}: expected 'path' or 'path<TAB>label', got {len(parts)} columns")
        item = Path(parts[0])
        if not item.is_absolute():
            item = path.parent / item
        if not _is_image(item.name):
            skipped += 1
            continue
        paths.append(str(item))
        names.append(parts[1] if len(parts) == 2 else None)
    labeled = [n for n in names if n is not None]
    if labeled and len(labeled) != len(names):
        raise ValueError(f"{list_file}: some lines have a label and some do not; label every line or none")
    source = ImageSource(paths, skipped=skipped)
    if labeled:
        source.classes = sorted(set(labeled))
        index = {c: i for i, c in enumerate(source.classes)}
        source.labels = [index[n] for n in labeled]
    return _report(source, str(list_file), key)


def labeled_folder(root: str | os.PathLike, key: str = "data.knn.train_root") -> ImageSource:
    """A folder with one subfolder per class (ImageFolder layout); images are found recursively in each."""
    path = _require_dir(root, key)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{key}={root}: expected one subfolder per class, found none")
    source = ImageSource([], labels=[], classes=classes)
    for label, name in enumerate(classes):
        try:
            found = scan_images(path / name, key=key)
        except ValueError:
            log.warning("%s: class folder '%s' has no images", root, name)
            continue
        source.paths += found.paths
        source.labels += [label] * len(found.paths)
        source.skipped += found.skipped
    return _report(source, str(root), key)


def image_source(root: str | None = None, file_list: str | None = None) -> ImageSource:
    """The unlabeled training source: a file list when given, else a recursive folder scan."""
    if file_list:
        return read_file_list(file_list)
    if not root:
        raise ValueError("data.root is not set: point it at a folder of images (or set data.file_list)")
    return scan_images(root)
