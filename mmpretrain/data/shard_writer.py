"""Writing WebDataset shards and their ``shards.json`` so that what the index records is what the reader gets.

Every key is checked before a byte is written: a key must be unique within the write, and must come back from the
tar unchanged (no dot: the reader splits a member name at its first dot; no line break, valid UTF-8). Shards are
written under temporary names and renamed only when every shard is complete, then ``shards.json`` is replaced
atomically: an interrupted write (Ctrl-C, a full disk) leaves the folder as it was. A folder that already holds
shards with the prefix is refused unless ``overwrite=True``, which replaces them (stale higher-numbered shards of
that prefix and their counts go too).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds

from mmpretrain.data.shard_index import INDEX_FILE, read_index, write_index
from mmpretrain.data.shard_samples import class_names, vocabulary_of
from mmpretrain.errors import DataError, PathExistsError, WriteError

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(text: str, what: str) -> None:
    """Refuse text a tar member name or shards.json cannot carry unchanged: control characters, invalid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{what} {text!r} is not valid UTF-8; rename it") from None
    if _UNSAFE.search(text):
        raise DataError(f"{what} {text!r} holds a line break or control character; rename it")


def check_key(key: Any, where: str) -> str:
    """A sample key the reader gives back unchanged, else `DataError` naming it."""
    if not isinstance(key, str) or not key:
        raise DataError(f"{where}: sample key {key!r} must be a non-empty string")
    _check_text(key, f"{where}: sample key")
    if "." in key:
        raise DataError(f"{where}: sample key {key!r} holds a dot; a reader splits member names at the first dot")
    return key


def _members(sample: dict[str, Any], where: str) -> dict[str, bytes]:
    out = {}
    for ext, value in sample.items():
        if ext.startswith("_"):
            continue
        if not ext or ext != ext.lower() or "/" in ext:
            raise DataError(f"{where}: member extension {ext!r} must be lower-case without '/'")
        out[ext] = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return out


class _Writer:
    """Shards under temporary names, rotated by count and size; `finish` renames them, `discard` removes them."""

    def __init__(self, out: Path, prefix: str, maxcount: int, maxsize: float) -> None:
        self.out, self.prefix, self.maxcount, self.maxsize = out, prefix, maxcount, maxsize
        self.tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.done: list[tuple[Path, Path]] = []
        self.counts: dict[str, int] = {}
        self.tar: wds.TarWriter | None = None
        self.count = self.size = 0

    def _next(self) -> None:
        self._close()
        final = self.out / f"{self.prefix}-{len(self.done):06d}.tar"
        temp = self.out / f".{final.name}.{self.tag}.tmp"
        self.done.append((temp, final))
        self.tar = wds.TarWriter(str(temp), encoder=False)
        self.count = self.size = 0

    def _close(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        try:
            if self.tar is None or self.count >= self.maxcount or self.size >= self.maxsize:
                self._next()
            self.tar.write({"__key__": key, **members})
        except OSError as err:
            raise _write_error(self.done[-1][0] if self.done else self.out, err) from err
        self.count += 1
        self.size += sum(len(v) for v in members.values())
        name = self.done[-1][1].name
        self.counts[name] = self.counts.get(name, 0) + 1

    def finish(self) -> list[Path]:
        try:
            self._close()
            for temp, _ in self.done:
                with open(temp, "rb+") as handle:
                    os.fsync(handle.fileno())
        except OSError as err:
            raise _write_error(self.done[-1][0], err) from err
        for temp, final in self.done:
            os.replace(temp, final)
        return [final for _, final in self.done]

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # the temporary is removed below whatever its state
            self._close()
        for temp, _ in self.done:
            temp.unlink(missing_ok=True)


def _write_error(path: Path, err: OSError) -> WriteError:
    return WriteError(f"{path}: cannot write the shard ({err.strerror or err}); nothing under a final name was "
                      "changed")


def _ours(name: str, prefix: str) -> bool:
    return re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", name) is not None


def write_shards(
    samples: Iterable[dict[str, Any]], output: str | os.PathLike, prefix: str = "shard", maxcount: int = 1000,
    maxsize: float = 1e9, classes: Sequence[str] | None = None, overwrite: bool = False,
) -> list[Path]:
    """Write samples (``__key__`` + members as bytes/str) to ``output/{prefix}-NNNNNN.tar``, and to ``shards.json``
    their counts (so readers need not count them) and vocabularies: ``classes`` as given (the source's class order)
    or the sorted labels seen, ``tags`` sorted.

    Shards written into a folder that already has some of another prefix (a train and a val split) are added to
    its ``shards.json``; the vocabularies then hold both splits' (the union, sorted, when they differ).

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> [p.name for p in write_shards([{"__key__": "a", "txt": "hello"}], out)]
        ['shard-000000.tar']

    Raises:
        PathExistsError: ``output`` holds shards with this prefix and ``overwrite`` is False.
        DataError: no samples, or a key is repeated, holds a dot, a line break or invalid UTF-8.
        WriteError: the disk is full or a file cannot be written; nothing under a final name was changed.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    index = read_index(out)
    present = sorted({p.name for p in out.glob(f"{prefix}-*.tar") if _ours(p.name, prefix)}
                     | {name for name in index["counts"] if _ours(name, prefix)})
    if present and not overwrite:
        raise PathExistsError(f"{out} already holds shards {prefix}-*.tar ({len(present)}: {present[0]} ...); "
                              "pass --overwrite (overwrite=True) to replace them, or another --prefix / folder")
    writer = _Writer(out, prefix, maxcount, maxsize)
    seen: set[str] = set()
    labels, tags = set(), set()
    try:
        for sample in samples:
            key = check_key(sample.get("__key__"), str(out))
            if key in seen:
                raise DataError(f"{out}: two samples have the key {key!r}; keys must be unique")
            seen.add(key)
            members = _members(sample, f"{out}: sample {key!r}")
            writer.write(key, members)
            found = vocabulary_of(iter([{"__key__": key, **members}]))
            labels, tags = labels | found[0], tags | found[1]
        if not seen:
            raise DataError(f"{out}: no samples to write")
        names = list(classes) if classes is not None else class_names(labels, str(out))
        paths = writer.finish()
    except BaseException:
        writer.discard()
        raise
    for name in present:
        if name not in writer.counts:
            (out / name).unlink(missing_ok=True)
    for field, values in (("classes", names), ("tags", sorted(tags))):
        before = index.get(field)
        index[field] = values if before in (None, [], values) else sorted(set(before) | set(values))
    index["counts"] = {**{k: v for k, v in index["counts"].items() if not _ours(k, prefix)}, **writer.counts}
    try:
        write_index(out, index)
    except OSError as err:
        raise WriteError(f"{out / INDEX_FILE}: cannot write the index ({err.strerror or err})") from err
    return paths


def sample_key(rel: str) -> str:
    """The shard key of a file at ``rel`` (a path relative to the source, with ``/``): the path without its extension,
    dots as ``_`` and folders joined by ``__`` (a reader splits member names at the first dot)."""
    suffix = Path(rel).suffix
    stem = rel[: -len(suffix)] if suffix else rel
    return stem.replace(".", "_").replace("/", "__")


def image_samples(paths: Sequence[str], root: str | os.PathLike, labels: Sequence[str] | None = None,
                  ) -> Iterator[dict[str, Any]]:
    """Image files as shard samples (keys by `sample_key`), checked before any is read: two files with one key
    (``a.jpg``/``a.png``, ``a.b.png``/``a_b.png``, ``a/b.png``/``a__b.png``) or a name with a line break or invalid
    UTF-8 raise `DataError` naming the files. The bytes are stored as they are (no re-encoding), and ``.json`` keeps
    the relative path and the label (the class name) when known."""
    base = Path(root)
    rels, owners = [], {}
    for path in paths:
        file = Path(path)
        try:
            rel = file.relative_to(base).as_posix()
        except ValueError:
            rel = file.name
        _check_text(rel, f"{base}: file name")
        key = sample_key(rel)
        if key in owners:
            raise DataError(f"{base}: {owners[key]!r} and {rel!r} would both be sample key {key!r} (keys drop the "
                            "extension and turn '.' into '_' and '/' into '__'); rename one")
        owners[key] = rel
        rels.append(rel)

    def read() -> Iterator[dict[str, Any]]:
        for i, (path, rel) in enumerate(zip(paths, rels)):
            file = Path(path)
            ext = file.suffix.lstrip(".").lower()
            ext = "jpg" if ext == "jpeg" else ext
            meta: dict[str, Any] = {"path": rel}
            if labels is not None:
                meta["label"] = labels[i]
            yield {"__key__": sample_key(rel), ext: file.read_bytes(), "json": json.dumps(meta)}

    return read()
