"""File helpers shared by the rooms that do I/O (hub, embedding store, extraction, recommendation export)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mmpretrain.errors import DataError, MissingPathError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints and shards hash in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | Path, blocking: bool = True) -> Iterator[None]:
    """Exclusive `flock` on `path` (created if missing): processes on one machine take turns.

    The lock file is opened with ``O_NOFOLLOW``: a symlink planted under its name is refused, never followed.
    With ``blocking=False`` a lock held elsewhere raises :class:`BlockingIOError` instead of waiting.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise OSError(e.errno, f"cannot open lock file without following links: {e.strerror}", str(path)) from e
    with os.fdopen(fd, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary sibling of `path` to write into; renamed over `path` only if the block succeeds.

    Readers never see a half-written file, and concurrent writers (ranks, processes) never share a temporary.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_failure(path: str | Path, err: OSError, needed: int | None = None) -> str:
    """One line on why writing ``path`` failed; for a full disk, the free space there and what was needed.

    Example:
        >>> write_failure("/d/x.npy", OSError(errno.ENOSPC, "No space left on device"), needed=4096)[:40]
        '/d/x.npy: cannot write (No space left on'
    """
    line = f"{path}: cannot write ({err.strerror or err})"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = Path(path).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        wanted = f"{needed} bytes are needed, " if needed is not None else ""
        line += f": {wanted}{free} bytes are free on {folder}; free some space and rerun"
    return line


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_saved_folder(directory: Path, files: Iterable[str], config: str, what: str) -> dict[str, Any]:
    """The JSON object ``config`` of a saved folder (an index, a projection) after checking all ``files`` exist.

    Raises:
        MissingPathError: a missing file, naming the folder as ``what``. DataError: ``config`` is not valid JSON.
    """
    for name in files:
        if not (directory / name).is_file():
            raise MissingPathError(f"{what} {directory} is missing {name}")
    try:
        return json.loads((directory / config).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse {directory / config}: {exc}") from exc

