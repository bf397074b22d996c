"""Where images come from: an unlabeled folder (recursive), a file list, a labeled folder (a subfolder per class) or
an image manifest, as training sources (:class:`ImageSource`) or as the id-keyed rows extraction and evaluation read
(:class:`InputRows`)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmpretrain.data.records import RECORD_SUFFIXES, read_records
from mmpretrain.errors import ConfigError, DataError, MissingPathError, NotAFolderError

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
        raise MissingPathError(f"{key}={root}: folder does not exist")
    if not path.is_dir():
        raise NotAFolderError(f"{key}={root}: not a folder")
    return path


def _report(source: ImageSource, where: str, key: str) -> ImageSource:
    if source.skipped:
        log.warning("%s: skipped %d files without an image extension", where, source.skipped)
    if not source.paths:
        raise DataError(f"{key}={where}: no images found ({source.skipped} non-image files skipped)")
    return source


def scan_images(root: str | os.PathLike, recursive: bool = True, key: str = "data.root") -> ImageSource:
    """All image files under `root`, sorted so the order (and so every seeded sample) is reproducible.

    Symlinked folders are followed, but each real folder is scanned once (under its real path where both are
    found): a link to an ancestor (a cycle) or a second link to the same folder adds no rows and cannot hang the
    scan. Only regular files count as images.
    """
    path = _require_dir(root, key)
    paths, skipped = [], 0
    walker = os.walk(path, followlinks=True) if recursive else [(str(path), [], os.listdir(path))]
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in walker:
        here = os.stat(dirpath)
        if (here.st_dev, here.st_ino) in visited:
            log.warning("%s: already scanned through another path (a symlink); skipped", dirpath)
            dirnames[:] = []
            continue
        visited.add((here.st_dev, here.st_ino))
        shown = sorted(d for d in dirnames if not d.startswith("."))
        # real folders first, so a folder reached both ways is listed under its real path
        dirnames[:] = sorted(shown, key=lambda d: os.path.islink(os.path.join(dirpath, d)))
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
        raise MissingPathError(f"{key}={list_file}: file does not exist")
    paths, names, skipped = [], [], 0
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise DataError(f"{list_file}:{lineno}: expected 'path' or 'path<TAB>label', got {len(parts)} columns")
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
        raise DataError(f"{list_file}: some lines have a label and some do not; label every line or none")
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
        raise DataError(f"{key}={root}: expected one subfolder per class, found none")
    source = ImageSource([], labels=[], classes=classes)
    for label, name in enumerate(classes):
        try:
            found = scan_images(path / name, key=key)
        except DataError:
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
        raise ConfigError("data.root is not set: point it at a folder of images (or set data.file_list)")
    return scan_images(root)


# ----------------------------------------------------------------------------------------------- id-keyed rows


@dataclass
class InputRows:
    """The rows of an input, in store order: image or video paths with their ids and, where known, labels and tags
    (and, for videos, title and OCR text, which a ``fused`` video encoder reads).

    ``root`` is the folder ids are relative to (the input folder, or the list's or manifest's folder).
    """

    root: Path
    kind: str
    paths: list[str]
    ids: list[str]
    labels: list[str] | None = None
    tags: list[list[str]] | None = None
    titles: list[str] | None = None
    ocr: list[str] | None = None

    def __post_init__(self) -> None:
        for name in ("ids", "labels", "tags", "titles", "ocr"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.paths):
                raise ValueError(f"{self.root}: {len(self.paths)} paths but {len(values)} {name}")
        seen: dict[str, int] = {}
        for row, item in enumerate(self.ids):
            if item in seen:
                raise DataError(f"{self.root}: id {item!r} appears twice (rows {seen[item]} and {row}: "
                                f"{self.paths[seen[item]]} and {self.paths[row]}); ids must be unique")
            seen[item] = row

    def __len__(self) -> int:
        return len(self.paths)

    def metadata(self, rows: np.ndarray) -> dict[str, list[Any]]:
        """Store metadata columns (``id``, ``path`` and ``label``/``tags`` where known) of the given rows."""
        columns: dict[str, list[Any]] = {
            "id": [self.ids[r] for r in rows],
            "path": [self.paths[r] for r in rows],
        }
        if self.labels is not None:
            columns["label"] = [self.labels[r] for r in rows]
        if self.tags is not None:
            columns["tags"] = [self.tags[r] for r in rows]
        if self.titles is not None:
            columns["title"] = [self.titles[r] for r in rows]
        return columns

    @property
    def is_video(self) -> bool:
        return self.kind == "video manifest"

    def fingerprint(self) -> str:
        """sha256 of the ids in order: a resumed run must see the same rows in the same order."""
        digest = hashlib.sha256()
        for item in self.ids:
            digest.update(item.encode("utf-8") + b"\n")
        return digest.hexdigest()

def _relative_id(path: Path, root: Path) -> str:
    """The path relative to ``root`` in POSIX form, or the absolute path for files outside it."""
    resolved = path.absolute()
    with contextlib.suppress(ValueError):
        return resolved.relative_to(root.absolute()).as_posix()
    return resolved.as_posix()

def parse_labels(labels: str | bool, key: str) -> str | bool:
    """``labels`` checked: ``True``, ``False`` or ``"auto"`` (see :func:`read_image_input`)."""
    if isinstance(labels, bool) or labels == "auto":
        return labels
    raise ConfigError(f"{key}: labels={labels!r} must be true, false or auto")

_SPLIT_LIKE = re.compile(r"^(train(ing)?|val(id(ation)?)?|test(ing)?|dev|eval|holdout|split|batch|part|shard|chunk|"
                         r"fold|subset|set|images?|data)[-_ ]?\d*$|^(batch|part|shard|chunk|fold|split)[-_ ]?\d+\b",
                         re.IGNORECASE)


def describe_labels(labels: list[str], origin: str) -> tuple[str, str | None]:
    """A line naming the classes an input gave (``3 classes: batch0, batch1, batch2 — labels from subfolders``)
    and, when most class names look like splits or batches rather than classes, a warning; else None."""
    classes = sorted(set(labels))
    shown = ", ".join(classes[:8]) + (f", ... ({len(classes) - 8} more)" if len(classes) > 8 else "")
    line = f"{len(classes)} classes: {shown} — labels from {origin}"
    odd = [name for name in classes if _SPLIT_LIKE.match(name)]
    if not odd or 2 * len(odd) < len(classes):
        return line, None
    return line, (f"the class names {odd[:5]} look like splits or batches, not classes: labels from {origin} are "
                  "probably not what you mean (point at a folder of class subfolders, or set labels=false)")


def _read_folder(root: Path, labels: str | bool, key: str) -> InputRows:
    found = scan_images(root, key=key)
    paths = [Path(p) for p in found.paths]
    rel = [p.relative_to(root) for p in paths]
    top_level = [p for p in rel if len(p.parts) == 1]
    if labels is True and top_level:
        raise ConfigError(f"{key}={root}: labels=true needs one subfolder per class, but {len(top_level)} images "
                         f"lie directly in the folder (e.g. {top_level[0]})")
    labeled = labels is True or (labels == "auto" and not top_level)
    return InputRows(
        root=root,
        kind="labeled folder" if labeled else "folder",
        paths=[str(p.absolute()) for p in paths],
        ids=[p.as_posix() for p in rel],
        labels=[p.parts[0] for p in rel] if labeled else None,
    )

def _read_file_list(path: Path, labels: str | bool, key: str) -> InputRows:
    """A text file of paths (``path`` or ``path<TAB>label`` per line, relative to its folder)."""
    found = read_file_list(path, key=key)
    if labels is True and found.labels is None:
        raise ConfigError(f"{key}={path}: labels=true but the file list has no label column (path<TAB>label)")
    keep = labels is not False and found.labels is not None
    return InputRows(
        root=path.parent,
        kind="file list",
        paths=[str(Path(p).absolute()) for p in found.paths],
        ids=[_relative_id(Path(p), path.parent) for p in found.paths],
        labels=[found.classes[i] for i in found.labels] if keep else None,
    )

def _tags(value: Any, where: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return value
    raise DataError(f"{where}: tags must be a list of strings, got {value!r}")

def _read_manifest(path: Path, labels: str | bool, key: str) -> InputRows:
    """An image manifest: one record per image with ``image`` (or ``path``) and optional ``id``, ``label``, ``tags``.

    Relative image paths resolve against the manifest's folder, as in the video manifest.
    """
    paths, ids, names, tags = [], [], [], []
    for lineno, record in read_records(path, list_columns=("tags",)):
        where = f"{path}:{lineno}"
        image = record.get("image", record.get("path"))
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: missing 'image' (the image path; a video manifest names each file in "
                            f"'video' on its first record); keys present: {sorted(record)}")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else path.parent / file
        paths.append(str(file.absolute()))
        ids.append(str(record["id"]) if record.get("id") not in (None, "") else _relative_id(file, path.parent))
        names.append(None if record.get("label") is None else str(record["label"]))
        tags.append(_tags(record["tags"], where) if record.get("tags") is not None else [])
    if not paths:
        raise DataError(f"{key}={path}: the manifest lists no images")
    given = [n for n in names if n is not None]
    if labels is True and len(given) != len(names):  # extraction stores the labels there are (null elsewhere)
        raise ConfigError(f"{key}={path}: labels=true but only {len(given)} of {len(names)} records have a label")
    if labels is True and not given:
        raise ConfigError(f"{key}={path}: labels=true but no record has a 'label'")
    return InputRows(
        root=path.parent,
        kind="manifest",
        paths=paths,
        ids=ids,
        labels=names if given and labels is not False else None,
        tags=tags if any(tags) else None,
    )

def is_video_manifest(path: Path) -> bool:
    """A manifest whose first record names a ``video`` (DESIGN §3) rather than an ``image``."""
    for _, record in read_records(path):
        return "video" in record
    return False

def read_image_input(source: str | os.PathLike, labels: str | bool = "auto", key: str = "input") -> InputRows:
    """Rows of images from a folder (recursive), a file list (``.txt``...) or an image manifest (``.jsonl/.json/.csv``).

    Args:
        source: the folder or file.
        labels: ``auto`` labels a folder whose images all sit in subfolders (one per class), a file list with a
            label column and a manifest with ``label`` fields; ``true`` requires labels, ``false`` drops them.
        key: config key named in errors.
    """
    labels = parse_labels(labels, key)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, labels, key)
    if not path.is_file():
        raise MissingPathError(f"{key}={source}: no such folder or file")
    if path.suffix.lower() in RECORD_SUFFIXES:
        return _read_manifest(path, labels, key)
    return _read_file_list(path, labels, key)
