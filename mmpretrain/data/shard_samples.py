"""Reading one WebDataset shard: its samples in tar order, and a `ShardError` for whatever could not be read.

Members are grouped into samples by key (``{key}.jpg`` + ``{key}.json`` ...; the key ends at the first dot of the
file name, as in ``webdataset``). What the reader refuses, and how it says so:

- a member larger than ``max_member_bytes`` (`MAX_MEMBER_BYTES`, or ``MMPRETRAIN_SHARD_MAX_MEMBER_BYTES``) is never
  read: its size comes from its tar header, so a small ``.tar.gz`` holding a huge member costs no memory. The sample
  is a ``member_too_large`` `ShardError`;
- a member whose extension starts with ``__`` (``k.__key__``, ``k.__error__``: names the reader itself uses) or a
  second member with the same extension under one key is a ``corrupt_member`` `ShardError` for that sample;
- a shard that cannot be opened, ends early, stalls (an ``http(s)://`` shard delivering under `LOW_SPEED_BYTES` per
  second for ``stall_s`` seconds, `STALL_S` or ``MMPRETRAIN_SHARD_STALL_S``) or has a member header that does not
  parse ends with a ``truncated_shard`` / ``corrupt_member`` `ShardError` naming the URL;
- a shard holding more or fewer samples than its ``shards.json`` records (``expected``) raises `DataError` naming
  the shard and both numbers, or only warns when ``count_check="warn"`` (``MMPRETRAIN_SHARD_COUNT_CHECK``).

A consumer tells the marker from a sample with ``isinstance(raw, ShardError)``: it is not a dict, so no tar member
can produce it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from typing import Any

import webdataset as wds
from webdataset.gopen import Pipe

from mmpretrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: members above this many bytes are refused unread (a long HD video clip fits; a decompression bomb does not)
MAX_MEMBER_BYTES = 256 << 20
#: an http(s) shard slower than LOW_SPEED_BYTES per second for this many seconds is reported as truncated
STALL_S = 60
LOW_SPEED_BYTES = 1024
COUNT_CHECKS = ("fail", "warn")
SHARD_REASONS = ("truncated_shard", "corrupt_member", "member_too_large")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_IGNORED_EXITS = (141, 23)  # SIGPIPE and curl's write error: the reader stopped early on purpose
_CURL_EXITS = {6: "host not found", 7: "connection refused", 22: "HTTP error status", 28: "stalled or timed out",
               52: "empty reply", 56: "connection reset"}


class SampleError(Exception):
    """A shard sample that cannot be used; ``reason`` is short so failures are counted by kind."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self) -> tuple:
        return type(self), (self.reason, self.detail)


@dataclasses.dataclass(frozen=True)
class ShardError:
    """What `read_shard` yields in place of a sample it could not read.

    Attributes:
        reason: ``truncated_shard``, ``corrupt_member`` or ``member_too_large``.
        url: the shard. detail: one line on what happened.
        key: the sample's key for a sample-level error; ``None`` when the shard itself ended here.
        read: samples read from the shard before this point.

    Usage::

        for raw in read_shard(url):
            if isinstance(raw, ShardError):
                ...  # count raw.reason; raw.key is None when the rest of the shard is lost
    """

    reason: str
    url: str
    detail: str
    key: str | None = None
    read: int = 0

    @property
    def ends_shard(self) -> bool:
        """True when nothing after this point of the shard was read."""
        return self.key is None


def is_shard_error(raw: Any) -> bool:
    """True for the reader's `ShardError` marker (never for a sample, whatever its members are called)."""
    return isinstance(raw, ShardError)


def _env_number(name: str, default: float, low: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= low:
        raise ConfigError(f"{name}={text!r} must be a number >= {low:g}")
    return value


def read_limits() -> tuple[int, float, str]:
    """(max member bytes, stall seconds, count check) from the defaults and their environment variables."""
    check = os.environ.get("MMPRETRAIN_SHARD_COUNT_CHECK", "").strip() or "fail"
    if check not in COUNT_CHECKS:
        raise ConfigError(f"MMPRETRAIN_SHARD_COUNT_CHECK={check!r} is not one of {COUNT_CHECKS}")
    return (int(_env_number("MMPRETRAIN_SHARD_MAX_MEMBER_BYTES", MAX_MEMBER_BYTES, 1)),
            _env_number("MMPRETRAIN_SHARD_STALL_S", STALL_S, 1), check)


def open_shard(url: str, stall_s: float) -> Any:
    """A byte stream of the shard: ``http(s)://`` through curl with a low-speed limit (one attempt: a retry after
    some bytes would resend the start into the same stream), anything else through ``webdataset.gopen``."""
    if url.startswith(("http://", "https://")):
        stall = str(max(1, round(stall_s)))
        command = ["curl", "--fail", "--silent", "--show-error", "--location", "--connect-timeout", stall,
                   "--speed-limit", str(LOW_SPEED_BYTES), "--speed-time", stall, url]
        return Pipe(command, mode="rb", bufsize=1 << 16, ignore_status=list(_IGNORED_EXITS))
    return wds.gopen(url)


def _describe(error: Exception, stream: Any, url: str, stall_s: float) -> str:
    """One line on why a shard stopped; a command's exit status is spelled out (curl's by name)."""
    status = None
    if isinstance(stream, Pipe):
        with contextlib.suppress(subprocess.TimeoutExpired):  # the stream ended: the command has exited or will
            status = stream.proc.wait(timeout=5)
    if status in (None, 0, *_IGNORED_EXITS):
        return str(error.args[0]) if error.args else type(error).__name__
    if not url.startswith(("http://", "https://")):
        return f"command exit {status} (see its message above)"
    what = _CURL_EXITS.get(status, "see its message above")
    if status == 28:
        what = f"{what}: under {LOW_SPEED_BYTES} bytes/s for {stall_s:g} s (MMPRETRAIN_SHARD_STALL_S)"
    return f"curl exit {status} ({what})"


def _members(stream: Any, limit: int) -> Iterator[tuple[str, bytes | None, int]]:
    """(name, bytes or None when above ``limit``, size) of each regular file, checked against its header first."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # closing it leaves the stream open
        for info in tar:
            if not info.isreg() or _META.match(info.name):
                continue
            handle = tar.extractfile(info)
            if info.size > limit:
                while handle is not None and handle.read(1 << 20):  # drained in 1 MiB reads, never held whole
                    pass
                yield info.name, None, info.size
                continue
            yield info.name, handle.read() if handle is not None else b"", info.size
            tar.members = []


class _Group:
    """The members of one key, and the first thing wrong with them."""

    def __init__(self, key: str, url: str) -> None:
        self.sample: dict[str, Any] = {"__key__": key, "__url__": url}
        self.problem: tuple[str, str] | None = None

    def add(self, name: str, suffix: str, data: bytes | None, size: int, limit: int) -> None:
        if self.problem is not None:
            return
        if data is None:
            self.problem = ("member_too_large", f"{name}: {size} bytes, above the {limit}-byte limit "
                                                "(MMPRETRAIN_SHARD_MAX_MEMBER_BYTES)")
        elif suffix.startswith("__"):
            self.problem = ("corrupt_member", f"{name}: member extensions starting with '__' are reserved")
        elif suffix in self.sample:
            self.problem = ("corrupt_member", f"{name}: a second .{suffix} member under key "
                                              f"{self.sample['__key__']!r} (two samples share the key)")
        else:
            self.sample[suffix] = data

    def result(self, url: str, read: int) -> dict[str, Any] | ShardError:
        if self.problem is None:
            return self.sample
        return ShardError(self.problem[0], url, self.problem[1], self.sample["__key__"], read)


def _grouped(url: str, stream: Any, limit: int) -> Iterator[dict[str, Any] | ShardError]:
    group: _Group | None = None
    read = 0
    for name, data, size in _members(stream, limit):
        found = _KEY.match(name)
        if not found:
            continue
        key, suffix = found.group(1), found.group(2).lower()
        if group is None or key != group.sample["__key__"]:
            if group is not None:
                read += 1
                yield group.result(url, read - 1)
            group = _Group(key, url)
        group.add(name, suffix, data, size, limit)
    if group is not None:
        yield group.result(url, read)


def _count_mismatch(url: str, read: int, expected: int, check: str, more: bool) -> None:
    message = (f"shard {url}: {'more than ' if more else ''}{read} samples read, but shards.json records {expected} "
               "(a stale shards.json: rewrite it with mmpretrain-shards, or set MMPRETRAIN_SHARD_COUNT_CHECK=warn)")
    if check == "fail":
        raise DataError(message)
    log.warning("%s", message)


def read_shard(url: str, expected: int | None = None, *, max_member_bytes: int | None = None,
               stall_s: float | None = None, count_check: str | None = None) -> Iterator[dict[str, Any] | ShardError]:
    """The samples of one shard (``__key__``, ``__url__`` and one entry per member extension), in tar order, with a
    `ShardError` in place of each sample that cannot be read and a last one when the shard ends early.

    Args:
        url: a local path, ``http(s)://`` URL or ``pipe:`` command.
        expected: the sample count ``shards.json`` records, checked against what is read (None: no check).
        max_member_bytes / stall_s / count_check: override `read_limits` (see the module doc).

    Raises:
        DataError: the count read differs from ``expected`` and ``count_check`` is ``"fail"``.
    """
    limit, stall, check = read_limits()
    limit = limit if max_member_bytes is None else max_member_bytes
    stall = stall if stall_s is None else stall_s
    check = check if count_check is None else count_check
    read, error, rest, over = 0, None, b"", False
    try:
        stream = open_shard(url, stall)
    except (OSError, ValueError) as err:
        stream, error = None, err
    try:
        if stream is not None:
            try:
                for item in _grouped(url, stream, limit):
                    read += 1
                    if expected is not None and read > expected and not over:
                        over = True
                        if check == "fail":
                            break
                        _count_mismatch(url, expected, expected, check, more=True)
                    yield item
                else:
                    rest = stream.read()  # a tar ends in zero blocks: data after the end: a header did not parse
                    stream.close()  # a pipe (pipe:, https://) reports its command's failure here
            except (tarfile.TarError, EOFError, OSError, ValueError) as err:
                error = err
        if over and check == "fail":
            _count_mismatch(url, expected, expected, check, more=True)
        if error is not None:
            detail = _describe(error, stream, url, stall)
            log.warning("shard %s is truncated or unreadable after %d samples: %s", url, read, detail)
            yield ShardError("truncated_shard", url, detail, None, read)
        elif rest and rest.strip(b"\0"):
            log.warning("shard %s has a corrupt member header after %d samples; %d bytes after it are lost",
                        url, read, len(rest))
            yield ShardError("corrupt_member", url, f"{len(rest)} bytes unread after a member header", None, read)
        elif expected is not None and read < expected:
            _count_mismatch(url, read, expected, check, more=False)
    finally:
        if stream is not None:
            with contextlib.suppress(OSError):  # a reader that stopped early ends the command; its status is moot
                stream.close()


# ----------------------------------------------------------------------------------------------- members


def sample_json(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``.json`` member as a dict ({} when absent); one that does not parse is a corrupt member."""
    if "json" not in raw:
        return {}
    try:
        meta = json.loads(raw["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SampleError("corrupt_member", f"{raw['__key__']}.json: {err}") from None
    if not isinstance(meta, dict):
        raise SampleError("corrupt_member", f"{raw['__key__']}.json is not an object")
    return meta


def sample_label(raw: dict[str, Any]) -> Any:
    """The label of a sample: ``.cls`` (an integer as text) or the ``label`` of its ``.json``; None when absent."""
    if "cls" in raw:
        text = raw["cls"].decode("utf-8").strip()
        try:
            return int(text)
        except ValueError:
            raise SampleError("corrupt_member", f"{raw['__key__']}.cls is not an integer: {text[:40]!r}") from None
    meta = sample_json(raw)
    return meta.get("label")


def vocabulary_of(samples: Iterator[dict[str, Any] | ShardError]) -> tuple[set, set]:
    """Labels (``.cls`` integers or the ``.json`` ``label``) and tags of samples; unreadable ones are skipped."""
    labels, tags = set(), set()
    for raw in samples:
        if isinstance(raw, ShardError):
            continue
        try:
            label = sample_label(raw)
            meta = sample_json(raw)
        except SampleError:
            continue
        if label is not None:
            labels.add(label if isinstance(label, int) else str(label))
        if isinstance(meta.get("tags"), list):
            tags.update(str(t) for t in meta["tags"])
    return labels, tags


def class_names(labels: set, where: str) -> list[str]:
    """Sorted class names; ``.cls`` integers without names become ``"0" .. "max"``."""
    ints = {x for x in labels if isinstance(x, int)}
    if ints and len(ints) != len(labels):
        raise DataError(f"{where}: labels mix .cls integers and class names; give one kind (or a class list in "
                        "shards.json)")
    if ints:
        if min(ints) < 0:
            raise DataError(f"{where}: negative .cls label {min(ints)}")
        return [str(i) for i in range(max(ints) + 1)]
    return sorted(labels)
