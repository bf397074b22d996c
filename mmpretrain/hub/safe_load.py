"""Loading ``torch.save`` files without executing code from them (:func:`safe_torch_load`), and without tensors that
claim more memory than the file holds (:func:`check_storage`)."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from mmpretrain.hub.errors import CheckpointReadError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


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
            untyped = _read_member(self._archive, f"{self._prefix}data/{key}")
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=storage_type.dtype, _internal=True
            )
        return self._storages[key]


def _read_member(archive: zipfile.ZipFile, name: str) -> torch.UntypedStorage:
    """An archive member streamed straight into a storage of its size: one copy in memory, not two."""
    try:
        info = archive.getinfo(name)
    except KeyError as e:
        raise pickle.UnpicklingError(f"the archive lacks the storage member {name!r}") from e
    buffer = torch.empty(info.file_size, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    filled = 0
    with archive.open(info) as member:
        while filled < info.file_size and (n := member.readinto(view[filled : filled + _CHUNK])):
            filled += n
    if filled != info.file_size:
        raise pickle.UnpicklingError(f"storage member {name!r} holds {filled} of {info.file_size} bytes")
    return buffer.untyped_storage()


def _restricted_load(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise CheckpointReadError(
            f"{path}: not a torch.save zip archive; legacy pickles are not loaded (re-save the file)"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointReadError(f"{path}: no data.pkl in the archive; not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in archive.namelist():
            order = archive.read(f"{prefix}byteorder").decode().strip()
            if order != sys.byteorder:
                raise CheckpointReadError(f"{path}: saved as {order}-endian, this machine is {sys.byteorder}-endian")
        unpickler = _RestrictedUnpickler(archive, prefix)
        try:
            obj = unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, zipfile.BadZipFile) as e:
            raise CheckpointReadError(f"{path}: cannot unpickle the checkpoint: {e}") from e
    logger.info("%s: loaded with inert placeholders for %s", path, sorted(unpickler.placeholders))
    return obj


def _overlaps(tensor: torch.Tensor) -> bool:
    """True when two elements of ``tensor`` share memory (a zero stride, or strides that interleave)."""
    span = 1
    for stride, size in sorted((st, sz) for st, sz in zip(tensor.stride(), tensor.shape) if sz > 1):
        if stride < span:
            return True
        span += stride * (size - 1)
    return False


def _tensors_in(obj: Any) -> Any:
    """(key path, tensor) of every tensor in nested dicts, lists and tuples. Each container is visited once (a file
    may share one sub-object many times: walking every reference would take exponential time), and without
    recursion (a file may nest deeper than Python's stack)."""
    stack, seen = [("", obj)], set()
    while stack:
        where, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield where, item
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            if isinstance(item, dict):
                stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in item.items())
            else:
                stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))


def check_storage(obj: Any, path: str | Path) -> None:
    """Refuse a tensor whose storage holds fewer bytes than ``numel × element_size``, or whose elements overlap.

    ``torch.save`` keeps a view's shape and strides, so a stride-0 view of one value keeps its full shape in a file
    of a few bytes; a model inferred from such shapes could ask for many gigabytes. Every tensor the hub loads must
    be backed by bytes that are really in the file.

    Raises:
        CheckpointReadError: naming ``path``, the key and both sizes.
    """
    for key, tensor in _tensors_in(obj):
        if tensor.numel() == 0:
            continue
        needed = tensor.numel() * tensor.element_size()
        held = tensor.untyped_storage().nbytes()
        if held < needed or _overlaps(tensor):
            raise CheckpointReadError(
                f"{path}: tensor {key!r} of shape {tuple(tensor.shape)} claims {needed} bytes but its storage holds "
                f"{held}{' with overlapping elements' if held >= needed else ''} (a stride-0 or overlapping view); "
                "refusing it"
            )


def safe_torch_load(path: str | Path) -> Any:
    """Load a ``torch.save`` file without ever executing code from it.

    ``torch.load(weights_only=True)`` first; when it refuses a global (official MoBY files pickle a yacs config,
    Lightning checkpoints may hold other objects) a restricted unpickler reads the file again: tensors are rebuilt
    and every non-allowlisted class or function becomes an inert :class:`_Placeholder`. Either way every tensor
    passes :func:`check_storage`.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointReadError(f"{path}: the file is empty (an interrupted copy or download?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        logger.info("%s: weights_only load refused (%s); using the restricted unpickler", path, str(e).split("\n")[0])
        obj = _restricted_load(path)
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointReadError(f"{path}: cannot read as a torch checkpoint: {type(e).__name__}: {e}") from e
    check_storage(obj, path)
    return obj
