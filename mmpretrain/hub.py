"""Checkpoint hub: a registry of named checkpoints, a safe download cache, format conversion and loading.

Everything that turns a name, URL or file into timm backbone weights lives here, so that the rest of the project
never touches the network, never unpickles untrusted code and never guesses a key layout.

Formats:
    ``mmpretrain``: this project's own format, ``model.safetensors`` (the config embedded in its metadata) plus
        ``config.json`` and ``model.safetensors.sha256``, written by :func:`publish`.
    ``moby-official``: the SwinTransformer/Transformer-SSL release files (``{"model": {"encoder.*", ...}}``).
    ``timm``: a plain state dict in timm's current key layout.
    ``lightning``: a training checkpoint of :mod:`mmpretrain.ssl` (only read, never registered).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import pickle
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmpretrain._io import file_lock, sha256_file

__all__ = [
    "FORMATS",
    "ChecksumError",
    "DownloadError",
    "HubError",
    "LoadedCheckpoint",
    "OfflineError",
    "RegistryEntry",
    "build_backbone",
    "convert_moby_official",
    "convert_to_published",
    "download",
    "hub_cache_dir",
    "list_pretrained",
    "load_checkpoint",
    "load_registry",
    "publish",
    "safe_torch_load",
    "sha256_file",
    "verify",
]

logger = logging.getLogger(__name__)

FORMATS = ("mmpretrain", "moby-official", "timm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "image_size": 224,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_METADATA_KEY = "mmpretrain_config"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_URL_SCHEMES = ("http", "https", "file")
_TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_USER_AGENT = "mmpretrain-hub"
_MOBY_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.3"


class HubError(RuntimeError):
    """Base class for checkpoint hub errors."""


class ChecksumError(HubError):
    """A file's sha256 differs from the expected one."""


class OfflineError(HubError):
    """A checkpoint is not cached and offline mode forbids fetching it."""


class DownloadError(HubError):
    """A download failed for good (client error, or retries exhausted)."""


@dataclasses.dataclass
class RegistryEntry:
    """A named checkpoint: where to fetch it, how to check it and what model and preprocessing it needs.

    ``architecture`` is ``{"name": timm model name, "kwargs": {...}}``, the same shape as in ``config.json``, so
    entries printed by :func:`publish` paste into a registry file unchanged.
    """

    name: str
    url: str
    format: str
    architecture: dict[str, Any]
    sha256: str | None = None
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "registry name")
        if self.format not in FORMATS:
            raise ValueError(f"checkpoint {self.name!r}: format {self.format!r} is not one of {FORMATS}")
        if urllib.parse.urlparse(self.url).scheme not in _URL_SCHEMES:
            raise ValueError(f"checkpoint {self.name!r}: url {self.url!r} must be http(s):// or file://")
        self.architecture = _normalize_architecture(self.architecture, f"checkpoint {self.name!r}")
        self.sha256 = _normalize_sha256(self.sha256, f"checkpoint {self.name!r}")

    def config(self) -> dict[str, Any]:
        """The loader config this entry implies for files that carry none (official and timm formats)."""
        return {
            "architecture": self.architecture,
            "preprocessing": _preprocessing(self.architecture, self.preprocessing),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the entry."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LoadedCheckpoint:
    """Backbone weights in timm layout plus what is needed to rebuild and feed the model.

    ``config`` holds at least ``architecture`` (``{"name", "kwargs"}``) and ``preprocessing``; published files
    also carry ``tokenizer`` and ``training`` (the training hyper-parameters).
    """

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    format: str
    path: Path | None = None


# ----------------------------------------------------------------------------------------------- registry


def _check_name(name: str, what: str) -> str:
    """Refuse names that could escape the cache folder once used as a path component."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is not a safe file name: use letters, digits and '._+-' only, "
            "not starting with '.' (no path separators, '..' or absolute paths)"
        )
    return name


def _normalize_sha256(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{what}: sha256 {value!r} is not 64 hex digits")
    return value


def _normalize_architecture(arch: str | Mapping[str, Any], what: str) -> dict[str, Any]:
    """Accept ``"timm_name"`` or ``{"name": ..., "kwargs": {...}}`` and return the dict form."""
    if isinstance(arch, str):
        return {"name": arch, "kwargs": {}}
    if not isinstance(arch, Mapping) or not isinstance(arch.get("name"), str):
        raise ValueError(f"{what}: architecture must be a timm model name or {{'name': ..., 'kwargs': {{...}}}}")
    unknown = set(arch) - {"name", "kwargs"}
    if unknown:
        raise ValueError(f"{what}: unknown architecture keys {sorted(unknown)}")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{what}: architecture kwargs must be a mapping")
    return {"name": arch["name"], "kwargs": dict(kwargs)}


def _preprocessing(arch: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Fill preprocessing defaults; a model built for another ``img_size`` gets that as the default size."""
    out = dict(DEFAULT_PREPROCESSING)
    img_size = arch.get("kwargs", {}).get("img_size")
    if isinstance(img_size, int):
        out["image_size"] = img_size
    out.update(given or {})
    return out


_MOBY_PREPROCESSING = {"image_size": 224, "interpolation": "bicubic", "crop_pct": 0.875}

_BUILTINS = (
    RegistryEntry(
        name="moby_swin_t_300ep",
        url=f"{_MOBY_RELEASE}/moby_swin_t_300ep_pretrained.pth",
        format="moby-official",
        architecture={"name": "swin_tiny_patch4_window7_224", "kwargs": {}},
        preprocessing=dict(_MOBY_PREPROCESSING),
        description="MoBY Swin-T, 300 epochs on ImageNet-1K (official release; 75.3 linear top-1)",
    ),
    RegistryEntry(
        name="moby_deit_small_300ep",
        url=f"{_MOBY_RELEASE}/moby_deit_small_300ep_pretrained.pth",
        format="moby-official",
        architecture={"name": "deit_small_patch16_224", "kwargs": {}},
        preprocessing=dict(_MOBY_PREPROCESSING),
        description="MoBY DeiT-S, 300 epochs on ImageNet-1K (official release; 72.8 linear top-1)",
    ),
)


def _read_registry_file(path: Path) -> list[RegistryEntry]:
    """Parse a JSON or YAML registry: a list of entries with ``name``, or a mapping name -> entry."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"registry file {path}: invalid JSON: {e}") from e
    if isinstance(data, Mapping):
        items = [{"name": name, **(body or {})} for name, body in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError(f"registry file {path}: expected a list of entries or a mapping name -> entry")
    fields = {f.name for f in dataclasses.fields(RegistryEntry)}
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"registry file {path}: entry {i} is not a mapping")
        label = f"registry file {path}, entry {item.get('name', i)!r}"
        unknown = set(item) - fields
        if unknown:
            raise ValueError(f"{label}: unknown keys {sorted(unknown)} (allowed: {sorted(fields)})")
        missing = {"name", "url", "format", "architecture"} - set(item)
        if missing:
            raise ValueError(f"{label}: missing keys {sorted(missing)}")
        try:
            entries.append(RegistryEntry(**item))
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from e
    return entries


def load_registry(path: str | Path | None = None) -> dict[str, RegistryEntry]:
    """Built-in entries, overridden by the files in ``MMPRETRAIN_REGISTRY`` (``os.pathsep``-separated), then ``path``.

    User files come last so a team can pin mirrors or hashes of the built-ins without editing the package.
    """
    entries = {e.name: dataclasses.replace(e) for e in _BUILTINS}
    files = [Path(p) for p in os.environ.get("MMPRETRAIN_REGISTRY", "").split(os.pathsep) if p]
    if path is not None:
        files.append(Path(path))
    for file in files:
        file = file.expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"registry file {file} does not exist")
        entries.update((e.name, e) for e in _read_registry_file(file))
    return entries


def list_pretrained(registry: str | Path | None = None) -> list[str]:
    """Names accepted by :func:`download`, :func:`load_checkpoint` and ``mmpretrain.load_encoder``."""
    return sorted(load_registry(registry))


# ----------------------------------------------------------------------------------------------- hashing


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    side = _sidecar(path)
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").split()
    return text[0].lower() if text else None


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def verify(path: str | Path, sha256: str | None = None) -> str:
    """Check a file against ``sha256`` (or its ``<file>.sha256`` sidecar) and return the actual hash.

    Without an expected hash there is nothing to compare: the hash is returned so the caller can record it.

    Raises:
        ChecksumError: the hashes differ; the message names the file, the expected and the actual hash.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    expected = _normalize_sha256(sha256, str(path)) if sha256 else _read_sidecar(path)
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


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in _URL_SCHEMES


def _url_filename(url: str) -> str:
    """The last path segment of ``url``, percent-decoded, refused if it could act as a path."""
    segment = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]
    return _check_name(urllib.parse.unquote(segment), f"file name derived from {url!r}")


def _cache_path(root: Path, name: str | None, url: str) -> Path:
    """``<root>/names/<name>/<file>`` or ``<root>/urls/<hash of url>/<file>``, always inside ``root``."""
    filename = _url_filename(url)
    if name is not None:
        folder = root / "names" / _check_name(name, "registry name")
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
        _write_text_atomic(_sidecar(dest), f"{actual}  {dest.name}\n")
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
    elif _is_url(name_or_url):
        url, name, expected = name_or_url, None, sha256
    else:
        raise KeyError(f"{name_or_url!r} is neither a registered checkpoint ({', '.join(sorted(entries))}) nor a URL")
    expected = _normalize_sha256(expected, name_or_url)
    if urllib.parse.urlparse(url).scheme == "file":
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        verify(local, expected)
        return local
    root = Path(cache_dir).expanduser() if cache_dir is not None else hub_cache_dir()
    dest = _cache_path(root, name, url)
    with _local_rank_zero_first():
        return _download_to(dest, url, name_or_url, expected, progress, retries, backoff)


# ----------------------------------------------------------------------------------------------- safe loading


class _Placeholder(dict):
    """Inert stand-in for a class or function that a checkpoint names but that is not on the allowlist.

    Calling, building or filling it only records the arguments, so pickled configs (e.g. a yacs ``CfgNode``)
    load as data and a pickled ``os.system`` call does nothing.
    """

    target = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.__dict__.setdefault("items", []).append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __repr__(self) -> str:
        return f"<untrusted {self.target} args={self.args!r} items={dict(self)!r}>"


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Reads the ``data.pkl`` of a ``torch.save`` zip with a tensor-only allowlist; everything else is inert."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.storage.TypedStorage] = {}
        self.placeholders: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        self.placeholders.add(f"{module}.{name}")
        return type(name, (_Placeholder,), {"target": f"{module}.{name}", "__module__": __name__})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else torch.UntypedStorage(0)
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=storage_type.dtype, _internal=True
            )
        return self._storages[key]


def _restricted_load(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise HubError(f"{path}: not a torch.save zip archive; legacy pickles are not loaded (re-save the file)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise HubError(f"{path}: no data.pkl in the archive; not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode().strip()
            if order != sys.byteorder:
                raise HubError(f"{path}: saved as {order}-endian, this machine is {sys.byteorder}-endian")
        unpickler = _RestrictedUnpickler(archive, prefix)
        obj = unpickler.load()
    logger.info("%s: loaded with inert placeholders for %s", path, sorted(unpickler.placeholders))
    return obj


def safe_torch_load(path: str | Path) -> Any:
    """Load a ``torch.save`` file without ever executing code from it.

    ``torch.load(weights_only=True)`` first; when it refuses a global (official MoBY files pickle a yacs config,
    Lightning checkpoints may hold other objects) a restricted unpickler reads the file again: tensors are rebuilt
    and every non-allowlisted class or function becomes an inert :class:`_Placeholder`.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        logger.info("%s: weights_only load refused (%s); using the restricted unpickler", path, str(e).split("\n")[0])
    except RuntimeError as e:
        raise HubError(f"{path}: cannot read as a torch checkpoint: {e}") from e
    return _restricted_load(path)


# ----------------------------------------------------------------------------------------------- conversion


def convert_moby_official(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Turn an official MoBY checkpoint into timm backbone weights (load them strict into a ``num_classes=0`` model).

    Keeps the online ``encoder.`` only (drops ``encoder_k``, projectors, predictor and queues), drops the
    ``relative_position_index``/``attn_mask`` buffers and any classifier ``head``, and for Swin moves
    PatchMerging from the end of stage i (original layout) to the start of stage i+1 (timm layout).

    Args:
        state: the loaded file (``{"model": ...}``) or its ``model`` dict.
    """
    model = state.get("model", state)
    if not isinstance(model, Mapping) or not any(k.startswith("encoder.") for k in model):
        raise KeyError("not an official MoBY checkpoint: no 'encoder.' keys under 'model'")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if not key.startswith("encoder."):
            continue
        key = key[len("encoder.") :]
        if key.endswith(("relative_position_index", "attn_mask")) or key.startswith("head."):
            continue
        out[key] = value
    if any(k.startswith("layers.0.downsample.") for k in out):
        out = {re.sub(r"^layers\.(\d+)\.downsample\.", _next_stage, k): v for k, v in out.items()}
    return out


def _next_stage(match: re.Match[str]) -> str:
    return f"layers.{int(match.group(1)) + 1}.downsample."


def _model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture kwargs without the head and weight switches, which the hub always sets itself."""
    return {k: v for k, v in dict(kwargs or {}).items() if k not in ("num_classes", "pretrained")}


def _lightning_config(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and online backbone weights (``backbone.*``) of a Lightning training checkpoint of this project."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    for key in ("backbone", "image_size", "mean", "std", "interpolation"):
        if key not in hparams:
            raise KeyError(f"{source}: training checkpoint lacks hyper_parameters[{key!r}]")
    architecture = {"name": hparams["backbone"], "kwargs": _model_kwargs(hparams.get("backbone_kwargs"))}
    preprocessing = {
        "image_size": int(hparams["image_size"]),
        "mean": [float(x) for x in hparams["mean"]],
        "std": [float(x) for x in hparams["std"]],
        "interpolation": str(hparams["interpolation"]),
        "crop_pct": float(hparams.get("crop_pct", DEFAULT_PREPROCESSING["crop_pct"])),
    }
    config: dict[str, Any] = {"architecture": architecture, "preprocessing": preprocessing}
    if hparams.get("tokenizer") is not None:
        config["tokenizer"] = hparams["tokenizer"]
    config["training"] = json.loads(json.dumps(hparams, default=str))
    prefix = "backbone."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise KeyError(f"{source}: training checkpoint has no '{prefix}*' weights in state_dict")
    return config, state


def _write_published(out_dir: Path, state: Mapping[str, torch.Tensor], config: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (config in its metadata), ``config.json`` and the sha256 sidecar atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = out_dir / f"{WEIGHTS_FILE}.tmp"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={_CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)})
    os.replace(tmp, weights)
    digest = sha256_file(weights)
    _write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_text_atomic(_sidecar(weights), f"{digest}  {WEIGHTS_FILE}\n")
    return digest


def _published_entry(out_dir: Path, name: str, url: str | None, digest: str, config: dict[str, Any]) -> dict[str, Any]:
    entry = RegistryEntry(
        name=name,
        url=url or (out_dir / WEIGHTS_FILE).resolve().as_uri(),
        format="mmpretrain",
        architecture=config["architecture"],
        sha256=digest,
        preprocessing=config["preprocessing"],
    )
    return entry.to_dict()


def _default_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-+") or "checkpoint"


def publish(
    training_checkpoint: str | Path, out_dir: str | Path, name: str | None = None, url: str | None = None
) -> dict[str, Any]:
    """Turn a Lightning training checkpoint into the own format and return the registry entry to paste.

    Writes ``model.safetensors`` (online backbone only), ``config.json`` (architecture, preprocessing, tokenizer,
    training hyper-parameters) and ``model.safetensors.sha256`` into ``out_dir``.

    Args:
        training_checkpoint: a ``.ckpt`` of :mod:`mmpretrain.ssl` (``state_dict`` with ``backbone.*`` and
            ``hyper_parameters`` with ``backbone``, ``backbone_kwargs``, ``image_size``, ``mean``, ``std``,
            ``interpolation``).
        out_dir: folder to write to.
        name: registry name; defaults to a sanitised file stem.
        url: where ``model.safetensors`` will be hosted; defaults to its local ``file://`` URI.
    """
    path = Path(training_checkpoint)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise KeyError(f"{path}: not a Lightning training checkpoint (no 'state_dict')")
    name = _check_name(name, "name") if name is not None else _default_name(path.stem)
    config, state = _lightning_config(ckpt, str(path))
    config["name"] = name
    out = Path(out_dir)
    digest = _write_published(out, state, config)
    return _published_entry(out, name, url, digest, config)


def convert_to_published(
    source: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    architecture: str | Mapping[str, Any] | None = None,
    url: str | None = None,
    registry: str | Path | None = None,
) -> dict[str, Any]:
    """Convert any loadable checkpoint (e.g. official MoBY) to the own format, after checking it loads strict."""
    loaded = load_checkpoint(source, architecture=architecture, registry=registry)
    build_backbone(loaded)
    config = {k: v for k, v in loaded.config.items() if k != "name"}
    name = _check_name(name, "name") if name is not None else _default_name(Path(str(source)).stem)
    config["name"] = name
    config["converted_from"] = {"source": str(source), "format": loaded.format}
    out = Path(out_dir)
    digest = _write_published(out, loaded.state_dict, config)
    return _published_entry(out, name, url, digest, config)


# ----------------------------------------------------------------------------------------------- loading


def _plain_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A timm-style state dict, possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HubError(f"{source}: not a state dict of tensors")
    return dict(obj)


def _read_safetensors(path: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a Mapping
    embedded = metadata.get(_CONFIG_METADATA_KEY)
    return (json.loads(embedded) if embedded else None), state


def _require_config(config: dict[str, Any] | None, source: str, fmt: str) -> dict[str, Any]:
    if config is None:
        raise HubError(
            f"{source}: a {fmt} checkpoint carries no architecture; pass architecture='<timm name>' "
            "or load it by a registry name"
        )
    return config


def load_checkpoint(
    name_or_path_or_url: str | Path,
    *,
    architecture: str | Mapping[str, Any] | None = None,
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> LoadedCheckpoint:
    """Load backbone weights in timm layout, with config, from a registry name, URL, file or published folder.

    The format is detected from the content: own safetensors (config in metadata or a sibling ``config.json``),
    official MoBY (``{"model": {"encoder.*"}}``), a Lightning training checkpoint of this project, or a plain
    timm state dict. Files without a config need ``architecture`` or a registry entry.

    Args:
        name_or_path_or_url: registry name, ``http(s)://``/``file://`` URL, ``.pth``/``.ckpt``/``.safetensors``
            file, or a folder written by :func:`publish`.
        architecture: timm name or ``{"name", "kwargs"}`` for files that carry no config.
        registry: an extra registry file.
        cache_dir: download cache root.
        progress: show a download progress bar.
    """
    source = str(name_or_path_or_url)
    entries = load_registry(registry)
    config: dict[str, Any] | None = None
    if architecture is not None:
        arch = _normalize_architecture(architecture, source)
        config = {"architecture": arch, "preprocessing": _preprocessing(arch, None)}
    if source in entries or _is_url(source):
        path = download(source, cache_dir=cache_dir, progress=progress, registry=registry)
        if source in entries and config is None:
            config = entries[source].config()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{source!r} is not a registered checkpoint ({', '.join(sorted(entries))}), a URL, or an existing path"
            )
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_FILE}; not a published checkpoint")
        path = path / WEIGHTS_FILE
    if path.suffix == ".safetensors":
        embedded, state = _read_safetensors(path)
        sibling = path.with_name(CONFIG_FILE)
        if embedded is None and path.name == WEIGHTS_FILE and sibling.is_file():
            embedded = json.loads(sibling.read_text(encoding="utf-8"))
        if embedded is not None:
            return LoadedCheckpoint(embedded, state, source, "mmpretrain", path)
        return LoadedCheckpoint(_require_config(config, source, "timm"), state, source, "timm", path)
    obj = safe_torch_load(path)
    if (
        isinstance(obj, Mapping)
        and isinstance(obj.get("model"), Mapping)
        and any(k.startswith("encoder.") for k in obj["model"])
    ):
        state = convert_moby_official(obj)
        return LoadedCheckpoint(_require_config(config, source, "moby-official"), state, source, "moby-official", path)
    if isinstance(obj, Mapping) and "state_dict" in obj and "backbone" in (obj.get("hyper_parameters") or {}):
        lightning_config, state = _lightning_config(obj, source)
        return LoadedCheckpoint(lightning_config, state, source, "lightning", path)
    state = _plain_state_dict(obj, source)
    return LoadedCheckpoint(_require_config(config, source, "timm"), state, source, "timm", path)


def build_backbone(loaded: LoadedCheckpoint) -> torch.nn.Module:
    """Create the timm model of ``loaded.config`` (``num_classes=0``, no timm download) and load it strict.

    Strict loading is the point: a bare prefix strip with ``strict=False`` would leave e.g. Swin's downsample
    layers random without a word. Classifier weights the headless model lacks are the only keys skipped.

    Raises:
        HubError: missing or unexpected keys or shape mismatches, naming the keys and the source.
    """
    import timm

    arch = loaded.config["architecture"]
    model = timm.create_model(arch["name"], pretrained=False, num_classes=0, **_model_kwargs(arch.get("kwargs")))
    expected = set(model.state_dict())
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    state = {
        k: v
        for k, v in loaded.state_dict.items()
        if k in expected or not any(k == h or k.startswith(f"{h}.") for h in heads)
    }
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HubError(
            f"{loaded.source}: weights do not fit {arch['name']}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(f"{loaded.source}: weights do not fit {arch['name']}: {e}") from e
    return model.eval()
