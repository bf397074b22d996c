"""The download cache: cache paths, resumable HTTP fetch with retries, offline mode, locks, sha256 checks."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from mmpretrain._io import file_lock, sha256_file, write_text_atomic
from mmpretrain.hub.errors import ChecksumError, DownloadError, HubError, OfflineError
from mmpretrain.hub.registry import URL_SCHEMES, check_name, load_registry, normalize_sha256

logger = logging.getLogger(__name__)

_TIMEOUT_S = 60.0
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


def verify(path: str | Path, sha256: str | None = None) -> str:
    """Check a file against ``sha256`` (or its ``<file>.sha256`` sidecar) and return the actual hash.

    Without an expected hash there is nothing to compare: the hash is returned so the caller can record it.

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
    return actual


# ----------------------------------------------------------------------------------------------- download


def hub_cache_dir() -> Path:
    """``$MMPRETRAIN_HOME/checkpoints`` (``MMPRETRAIN_HOME`` defaults to ``~/.cache/mmpretrain``)."""
    home = os.environ.get("MMPRETRAIN_HOME") or "~/.cache/mmpretrain"
    return Path(home).expanduser() / "checkpoints"


def _offline() -> bool:
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
    if not dest.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"refusing to write {dest} outside the cache folder {root}")
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


def _fetch_once(url: str, part: Path, progress: bool) -> None:
    """One HTTP attempt: append to ``part`` with a Range request when it exists, else write it from scratch."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
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
        if not resumed:
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as out,
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
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise _IncompleteDownload(f"{url}: connection closed at byte {part.stat().st_size} of {total}")


def _fetch(url: str, part: Path, progress: bool, retries: int, backoff: float) -> None:
    """Fetch with retries on connection errors and 5xx/429, sleeping ``backoff * 2**attempt`` between tries."""
    error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress)
            return
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
            logger.warning("download of %s failed (%s); retry %d/%d in %.1fs", url, error, attempt + 1, retries, delay)
            time.sleep(delay)
    raise DownloadError(f"{url}: download failed after {retries + 1} attempts: {error}") from error


def _download_to(
    dest: Path, url: str, label: str, sha256: str | None, progress: bool, retries: int, backoff: float
) -> Path:
    """Make ``dest`` a verified copy of ``url``; a cache hit touches no network."""
    if dest.is_file():
        if sha256 is None or _read_sidecar(dest) == sha256 or sha256_file(dest) == sha256:
            return dest
        logger.warning("cached %s does not match sha256 %s; fetching it again", dest, sha256)
        dest.unlink()
    if _offline():
        raise OfflineError(
            f"checkpoint {label!r} is not in the cache ({dest}) and offline mode is on "
            "(MMPRETRAIN_OFFLINE / HF_HUB_OFFLINE); copy the file there or unset offline mode"
        )
    with file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another process finished it while this one waited for the lock
            return dest
        part = dest.with_name(dest.name + ".part")
        _fetch(url, part, progress, retries, backoff)
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
        write_text_atomic(sidecar_path(dest), f"{actual}  {dest.name}\n")
        os.replace(part, dest)
    return dest


def download(
    name_or_url: str,
    cache_dir: str | Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
    retries: int = 3,
    *,
    backoff: float = 1.0,
    registry: str | Path | None = None,
) -> Path:
    """Return a local, sha256-verified copy of a registered checkpoint or a URL, downloading it at most once.

    The file is written to ``<file>.part`` and renamed when complete and verified; an existing ``.part`` is
    resumed with an HTTP Range request. Concurrent processes on one machine serialise on ``<file>.lock`` and
    under ``torch.distributed`` local rank 0 goes first, so a DDP job downloads once per machine. ``file://``
    URLs are verified and returned in place.

    Args:
        name_or_url: a registry name (see :func:`list_pretrained`) or an ``http(s)://``/``file://`` URL.
        cache_dir: cache root; defaults to :func:`hub_cache_dir`.
        sha256: expected hash; overrides the registry's. ``None`` for unknown: the hash is then recorded.
        progress: show a tqdm progress bar.
        retries: further attempts after connection errors and HTTP 5xx/429.
        backoff: seconds before the first retry, doubled each time.
        registry: an extra registry file (see :func:`load_registry`).

    Raises:
        OfflineError: not cached while ``MMPRETRAIN_OFFLINE``/``HF_HUB_OFFLINE`` is set; nothing was fetched.
        ChecksumError: the download does not match the expected hash (the bad file is removed).
        DownloadError: an HTTP client error, or all retries failed.
    """
    entries = load_registry(registry)
    if name_or_url in entries:
        entry = entries[name_or_url]
        url, name, expected = entry.url, entry.name, sha256 or entry.sha256
    elif is_url(name_or_url):
        url, name, expected = name_or_url, None, sha256
    else:
        raise KeyError(f"{name_or_url!r} is neither a registered checkpoint ({', '.join(sorted(entries))}) nor a URL")
    expected = normalize_sha256(expected, name_or_url)
    if urllib.parse.urlparse(url).scheme == "file":
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        verify(local, expected)
        return local
    root = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    dest = _cache_path(root, name, url)
    with _local_rank_zero_first():
        return _download_to(dest, url, name_or_url, expected, progress, retries, backoff)
