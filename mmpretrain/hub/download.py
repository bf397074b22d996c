"""The download cache: cache paths, resumable HTTP fetch with retries, offline mode, locks, sha256 checks."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmpretrain._io import file_lock, sha256_file, write_failure, write_text_atomic
from mmpretrain.errors import ConfigError
from mmpretrain.hub.errors import ChecksumError, DownloadError, HubError, OfflineError
from mmpretrain.hub.registry import URL_SCHEMES, check_name, load_registry, normalize_sha256

logger = logging.getLogger(__name__)

_TIMEOUT_S = 60.0
_DEADLINE_S = 6 * 3600.0
_CHUNK = 1 << 20
_USER_AGENT = "mmpretrain-hub"


# ----------------------------------------------------------------------------------------------- hashing


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").split()
    return text[0].lower() if text else None


def _stat_line(path: Path) -> str:
    stat = path.stat()
    return f"# size={stat.st_size} mtime_ns={stat.st_mtime_ns}"


def write_sidecar(path: Path, digest: str) -> None:
    """``<file>.sha256``: a ``sha256sum`` line, then the file's size and mtime, which let a cache hit skip hashing."""
    write_text_atomic(sidecar_path(path), f"{digest}  {path.name}\n{_stat_line(path)}\n")


def _sidecar_stat_matches(path: Path) -> bool:
    side = sidecar_path(path)
    lines = side.read_text(encoding="utf-8").splitlines() if side.is_file() else []
    return len(lines) > 1 and lines[1].strip() == _stat_line(path)


VERIFY_MODES = ("stat", "full")


def verify(path: str | Path, sha256: str | None = None) -> str:
    """See :func:`_rehash` (``download`` has a ``verify`` argument, so the work lives under another name)."""
    return _rehash(path, sha256)


def _rehash(path: str | Path, sha256: str | None = None) -> str:
    """Re-hash a file, compare it with ``sha256`` (or its ``<file>.sha256`` sidecar) and return the actual hash.

    Without an expected hash there is nothing to compare: the hash is returned so the caller can record it.
    A match refreshes the sidecar's size and mtime, so later cache hits may trust them again.

    Raises:
        ChecksumError: the hashes differ; the message names the file, the expected and the actual hash.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    expected = normalize_sha256(sha256, str(path)) if sha256 else _read_sidecar(path)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ChecksumError(f"{path}: sha256 mismatch: expected {expected}, actual {actual}")
    if expected is not None and sidecar_path(path).is_file() and _read_sidecar(path) == actual:
        write_sidecar(path, actual)
    return actual


def _cached_ok(dest: Path, sha256: str | None, mode: str) -> bool:
    """Whether the cached ``dest`` is the file asked for.

    ``stat``: trusted without hashing when the sidecar names the expected hash and its size and mtime still match
    the file; hashed in full otherwise. ``full``: always hashed. With no known hash the sidecar's recorded one is
    the expectation, so a cached file altered after download is noticed either way.
    """
    recorded = _read_sidecar(dest)
    expected = sha256 or recorded
    if expected is None:
        return True
    if mode == "stat" and recorded == expected and _sidecar_stat_matches(dest):
        return True
    actual = sha256_file(dest)
    if actual == expected:
        write_sidecar(dest, actual)
        return True
    logger.warning("cached %s hashes to %s, not %s; fetching it again", dest, actual, expected)
    return False


# ----------------------------------------------------------------------------------------------- download


def hub_cache_dir() -> Path:
    """``$MMPRETRAIN_HOME/checkpoints`` (``MMPRETRAIN_HOME`` defaults to ``~/.cache/mmpretrain``)."""
    home = os.environ.get("MMPRETRAIN_HOME") or "~/.cache/mmpretrain"
    return Path(home).expanduser() / "checkpoints"


def offline_mode() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("MMPRETRAIN_OFFLINE", "HF_HUB_OFFLINE"))


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in URL_SCHEMES


def _url_filename(url: str) -> str:
    """The last path segment of ``url``, percent-decoded, refused if it could act as a path."""
    segment = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    return check_name(urllib.parse.unquote(segment), f"file name derived from {url!r}")


def _cache_path(root: Path, name: str | None, url: str) -> Path:
    """``<root>/names/<name>/<file>`` or ``<root>/urls/<hash of url>/<file>``, always inside ``root``."""
    filename = _url_filename(url)
    if name is not None:
        folder = root / "names" / check_name(name, "registry name")
    else:
        folder = root / "urls" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    dest = folder / filename
    _refuse_symlinks(dest)
    if not dest.resolve().is_relative_to(root.resolve()):
        raise DownloadError(f"refusing to write {dest} outside the cache folder {root}")
    return dest


@contextlib.contextmanager
def _local_rank_zero_first() -> Iterator[None]:
    """Under ``torch.distributed``, local rank 0 runs the body first while the other ranks wait at a barrier.

    Every rank passes exactly one barrier, also when rank 0 fails, so an error never deadlocks the job.
    """
    dist = torch.distributed
    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    first = not active or int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0
    if not first:
        dist.barrier()
    try:
        yield
    finally:
        if active and first:
            dist.barrier()


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range`` header such as ``bytes 100-199/200`` or ``bytes */200``."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


class _IncompleteDownload(HubError):
    """The connection ended before the announced size arrived; the partial file is kept for resuming."""


_HTML_PREFIXES = (b"<!doctype html", b"<html", b"<head", b"<body")


def _refuse_symlinks(*paths: Path) -> None:
    """Cache files are only ever opened as themselves: a symlink planted in the cache is refused, never followed."""
    for path in paths:
        if path.is_symlink():
            raise DownloadError(f"{path} is a symlink; refusing to follow it out of the cache (remove it)")


def _open_part(part: Path, append: bool) -> Any:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | os.O_NOFOLLOW
    try:
        return os.fdopen(os.open(part, flags, 0o644), "ab" if append else "wb", buffering=0)  # bytes on disk = size
    except OSError as e:
        raise DownloadError(f"{part}: cannot open the partial download without following links: {e}") from e


def _part_state(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _validator(headers: Any) -> dict[str, str | None]:
    """What identifies the remote file's version: a strong ETag and/or Last-Modified (``If-Range`` accepts both)."""
    etag = headers.get("ETag")
    return {"etag": None if not etag or etag.startswith("W/") else etag, "last_modified": headers.get("Last-Modified")}


def _resume_from(url: str, part: Path) -> tuple[int, str | None]:
    """(bytes to keep, ``If-Range`` value) for an existing ``.part``; a part nothing vouches for starts over.

    A part is resumed only when it was started from the same URL and the server then sent a validator, which goes
    out as ``If-Range``: a server whose file changed since then answers with the whole new file, so bytes of two
    versions are never spliced.
    """
    if not part.exists():
        return 0, None
    state_file = _part_state(part)
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    if_range = (state.get("etag") or state.get("last_modified")) if isinstance(state, dict) else None
    if not if_range or state.get("url") != url:
        logger.warning("%s: no record of which version of %s it holds; starting over", part, url)
        return 0, None
    return part.stat().st_size, if_range


def _looks_like_html(first: bytes) -> bool:
    return first.lstrip()[:16].lower().startswith(_HTML_PREFIXES)


def _fetch_once(url: str, part: Path, progress: bool, deadline: float) -> None:
    """One HTTP attempt: resume ``part`` when its recorded validator still holds, else write it from scratch."""
    start, if_range = _resume_from(url, part)
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
        headers["If-Range"] = if_range
    timeout = max(0.1, min(_TIMEOUT_S, deadline - time.monotonic()))
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        if _content_range(e.headers.get("Content-Range"))[1] == start:
            return  # the partial file already holds every byte
        part.unlink()
        raise _IncompleteDownload(f"{url}: server refused to resume at byte {start}; restarting") from e
    with response:
        resumed = start > 0 and response.status == 206
        if resumed and _content_range(response.headers.get("Content-Range"))[0] != start:
            part.unlink()
            raise DownloadError(f"{url}: server resumed at the wrong offset ({response.headers['Content-Range']})")
        if resumed and _validator(response.headers)["etag"] not in (None, if_range) and if_range.startswith('"'):
            part.unlink()
            raise _IncompleteDownload(f"{url}: the server's file changed since {part} was started; restarting")
        if not resumed:
            start = 0
            kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if kind == "text/html" and not url.lower().endswith((".html", ".htm")):
                raise DownloadError(f"{url}: the server answered with an HTML page, not the file (Content-Type {kind})")
            try:
                write_text_atomic(_part_state(part), json.dumps({"url": url, **_validator(response.headers)}))
            except OSError as e:
                raise DownloadError(f"{url}: {write_failure(_part_state(part), e)}") from e
        length = response.headers.get("Content-Length")
        total = _content_range(response.headers.get("Content-Range"))[1] if resumed else None
        if total is None and length is not None:
            total = start + int(length)
        with (
            _open_part(part, append=resumed) as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[: -len(".part")],
                disable=not progress,
            ) as bar,
        ):
            first = True
            while chunk := response.read1(_CHUNK):
                if first and not resumed and _looks_like_html(chunk):
                    raise DownloadError(f"{url}: the server answered with an HTML page, not the file")
                first = False
                try:
                    view = memoryview(chunk)
                    while view:  # an unbuffered write may take part of the chunk
                        view = view[out.write(view) :]
                except OSError as e:  # a full cache: keep the part, so a rerun resumes once there is room
                    needed = total - part.stat().st_size if total is not None else None
                    raise DownloadError(f"{url}: {write_failure(part, e, needed)}; the partial file is kept") from e
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise _DeadlineExceeded(f"{url}: download deadline passed at byte {out.tell()}")
    if total is not None and part.stat().st_size != total:
        raise _IncompleteDownload(f"{url}: connection closed at byte {part.stat().st_size} of {total}")


class _DeadlineExceeded(DownloadError):
    """The overall download deadline passed; the partial file is kept for a later resume."""


def _fetch(url: str, part: Path, progress: bool, retries: int, backoff: float, deadline_s: float) -> None:
    """Fetch with retries on connection errors and 5xx/429, sleeping ``backoff * 2**attempt`` between tries.

    All attempts together get ``deadline_s`` seconds, so a server that drips bytes cannot hold the caller forever.
    """
    deadline = time.monotonic() + deadline_s
    error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, deadline)
            return
        except _DeadlineExceeded as e:
            raise DownloadError(f"{e} ({deadline_s:g} s for the whole download); the partial file is kept") from e
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            error = e
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            error = e
        except _IncompleteDownload as e:
            error = e
        if attempt < retries:
            delay = backoff * 2**attempt
            if time.monotonic() + delay > deadline:
                raise DownloadError(f"{url}: download deadline of {deadline_s:g} s passed: {error}") from error
            logger.warning("download of %s failed (%s); retry %d/%d in %.1fs", url, error, attempt + 1, retries, delay)
            time.sleep(delay)
    raise DownloadError(f"{url}: download failed after {retries + 1} attempts: {error}") from error


def _download_to(dest: Path, url: str, label: str, sha256: str | None, options: _Options) -> Path:
    """Make ``dest`` a verified copy of ``url``; a cache hit touches no network."""
    part = dest.with_name(dest.name + ".part")
    lock = dest.with_name(dest.name + ".lock")
    _refuse_symlinks(dest, sidecar_path(dest), part, _part_state(part), lock)
    if dest.is_file():
        if _cached_ok(dest, sha256, options.verify):
            return dest
        dest.unlink()
    if offline_mode():
        raise OfflineError(
            f"checkpoint {label!r} is not in the cache ({dest}) and offline mode is on "
            "(MMPRETRAIN_OFFLINE / HF_HUB_OFFLINE); copy the file there or unset offline mode"
        )
    with file_lock(lock):
        if dest.is_file():  # another process finished it while this one waited for the lock
            return dest
        _fetch(url, part, options.progress, options.retries, options.backoff, options.deadline_s)
        actual = sha256_file(part)
        if sha256 is not None and actual != sha256:
            part.unlink()
            raise ChecksumError(
                f"{url}: sha256 mismatch: expected {sha256}, actual {actual}; removed the bad download {part}"
            )
        if sha256 is None:
            logger.warning(
                "%s has no known sha256; downloaded file hashes to %s (add it to the registry)", label, actual
            )
        os.replace(part, dest)
        _part_state(part).unlink(missing_ok=True)
        try:
            write_sidecar(dest, actual)  # atomic: a full disk leaves no sidecar (the next hit re-hashes), not half
        except OSError as e:
            raise DownloadError(f"{url}: {write_failure(sidecar_path(dest), e)}") from e
    return dest


@dataclasses.dataclass(frozen=True)
class _Options:
    progress: bool
    retries: int
    backoff: float
    deadline_s: float
    verify: str


def _deadline_default() -> float:
    text = os.environ.get("MMPRETRAIN_DOWNLOAD_DEADLINE_S", "").strip()
    try:
        return float(text) if text else _DEADLINE_S
    except ValueError as e:
        raise DownloadError(f"MMPRETRAIN_DOWNLOAD_DEADLINE_S={text!r} is not a number of seconds") from e


def cache_path(name_or_url: str, cache_dir: str | Path | None = None, registry: str | Path | None = None) -> Path:
    """Where :func:`download` keeps a registered checkpoint or URL (``file://`` URLs: the file itself)."""
    url, name, _ = _resolve(name_or_url, None, registry)
    if urllib.parse.urlparse(url).scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    root = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    return _cache_path(root, name, url)


def verify_cached(
    name_or_url: str, sha256: str | None = None, cache_dir: str | Path | None = None, registry: str | Path | None = None
) -> tuple[Path, str]:
    """Re-hash the cached copy of a registered checkpoint or URL against its pinned hash (else its sidecar).

    Returns:
        The cached path and its actual sha256.

    Raises:
        ChecksumError: the file changed since it was verified.
        FileNotFoundError: it is not in the cache.
    """
    _, _, expected = _resolve(name_or_url, sha256, registry)
    path = cache_path(name_or_url, cache_dir, registry)
    _refuse_symlinks(path, sidecar_path(path))
    return path, _rehash(path, expected)


def _resolve(name_or_url: str, sha256: str | None, registry: str | Path | None) -> tuple[str, str | None, str | None]:
    entries = load_registry(registry)
    if name_or_url in entries:
        entry = entries[name_or_url]
        url, name, expected = entry.url, entry.name, sha256 or entry.sha256
    elif is_url(name_or_url):
        url, name, expected = name_or_url, None, sha256
    else:
        raise KeyError(f"{name_or_url!r} is neither a registered checkpoint ({', '.join(sorted(entries))}) nor a URL")
    return url, name, normalize_sha256(expected, name_or_url)


def download(
    name_or_url: str,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    retries: int = 3,
    *,
    backoff: float = 1.0,
    registry: str | Path | None = None,
    verify: str = "stat",
    deadline_s: float | None = None,
) -> Path:
    """Return a local, sha256-verified copy of a registered checkpoint or a URL, downloading it at most once.

    The file is written to ``<file>.part`` and renamed when complete and verified; an existing ``.part`` is
    resumed with an HTTP Range request guarded by ``If-Range`` (the ETag or Last-Modified that started it, kept in
    ``<file>.part.json``), so a changed remote file restarts instead of being spliced. HTML pages served in place
    of the file and bodies shorter than announced are never kept, and symlinks in the cache are never followed.
    Concurrent processes on one machine serialise on ``<file>.lock`` and under ``torch.distributed`` local rank 0
    goes first, so a DDP job downloads once per machine. ``file://`` URLs are verified and returned in place.

    Args:
        name_or_url: a registry name (see :func:`list_pretrained`) or an ``http(s)://``/``file://`` URL.
        cache_dir: cache root; defaults to :func:`hub_cache_dir`.
        sha256: expected hash; overrides the registry's. ``None`` for unknown: the hash is then recorded.
        progress: show a tqdm progress bar.
        retries: further attempts after connection errors and HTTP 5xx/429.
        backoff: seconds before the first retry, doubled each time.
        registry: an extra registry file (see :func:`load_registry`).
        verify: how a cache hit is checked: ``"stat"`` trusts the sidecar's hash while the file's size and mtime
            still match it and re-hashes otherwise; ``"full"`` always re-hashes.
        deadline_s: seconds for the whole download, all retries together (default 6 h, or
            ``MMPRETRAIN_DOWNLOAD_DEADLINE_S``).

    Raises:
        OfflineError: not cached while ``MMPRETRAIN_OFFLINE``/``HF_HUB_OFFLINE`` is set; nothing was fetched.
        ChecksumError: the download does not match the expected hash (the bad file is removed).
        DownloadError: an HTTP client error, an HTML page instead of the file, the deadline passed, a symlink in
            the cache, or all retries failed.
    """
    if verify not in VERIFY_MODES:
        raise ConfigError(f"verify={verify!r} is not one of {VERIFY_MODES}")
    url, name, expected = _resolve(name_or_url, sha256, registry)
    if urllib.parse.urlparse(url).scheme == "file":
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        _rehash(local, expected)
        return local
    root = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    dest = _cache_path(root, name, url)
    deadline = _deadline_default() if deadline_s is None else float(deadline_s)
    options = _Options(progress, retries, backoff, deadline, verify)
    with _local_rank_zero_first():
        return _download_to(dest, url, name_or_url, expected, options)
