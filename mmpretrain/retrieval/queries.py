"""What a search query names: files to encode (images or videos), or a ``.npy`` file of ready embeddings.

The kinds of files are the caller's vocabulary (``kinds`` maps a kind to its file suffixes; ``expand`` lists the
files of a folder), so this room reads no images or videos itself.

Usage::

    from mmpretrain.retrieval.queries import resolve_queries
    found = resolve_queries(["cat.jpg", "dog.png"], dim=768, kinds={"image": {".jpg", ".png"}})
    found.kind, found.items        # "image", ["cat.jpg", "dog.png"]; found.embeddings is None: encode them
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpretrain.errors import ConfigError, DataError, MissingPathError

__all__ = ["Queries", "load_query_embeddings", "resolve_queries"]


@dataclass(frozen=True)
class Queries:
    """Resolved queries: ``embeddings`` (kind ``embedding``) or the files of one ``kind`` to encode, in order.

    ``items`` names each query in the output (a file, or ``name.npy[row]``).
    """

    kind: str
    items: list[str]
    embeddings: np.ndarray | None = None


def load_query_embeddings(path: str | os.PathLike, key: str, dim: int) -> np.ndarray:
    """Query embeddings from a .npy file (one vector, or one row per query), refusing pickles and wrong widths.

    Raises:
        DataError: not a plain numeric array of width ``dim``, naming ``key``.
    """
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{key}={path}: not a plain numeric .npy array ({exc})") from exc
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != dim or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{key}={path}: need a numeric (n, {dim}) array to match the index, got "
                        f"{array.dtype}{array.shape}")
    return array


def resolve_queries(
    items: Sequence[str],
    dim: int,
    kinds: Mapping[str, Collection[str]],
    expand: Callable[[Path], list[str]] | None = None,
    key: str = "query",
    supported: str = "",
) -> Queries:
    """Sort query paths into one kind of file to encode, or load a lone ``.npy`` file of embeddings.

    Args:
        items: paths as the user gave them.
        dim: the index's width (a ``.npy`` file must match it).
        kinds: kind -> lower-case suffixes (``{"image": {".jpg"}, "video": {".mp4"}}``).
        expand: a folder's files, all of the first kind (None: folders are refused).
        key: the config key named in errors.
        supported: a sentence appended to the error for an unknown file type.

    Raises:
        MissingPathError: a path that does not exist.
        ConfigError: an unknown file type, a ``.npy`` among other queries, or two kinds mixed.
    """
    found: dict[str, list[str]] = {kind: [] for kind in kinds}
    first = next(iter(kinds))
    for item in items:
        path = Path(item).expanduser()
        suffix = path.suffix.lower()
        if not path.exists():
            raise MissingPathError(f"{key}={item}: no such file or folder")
        if path.is_dir() and expand is not None:
            found[first] += expand(path)
        elif suffix == ".npy":
            if len(items) > 1:
                raise ConfigError(f"{key}={item}: a .npy file of embeddings must be the only query")
            array = load_query_embeddings(path, key, dim)
            return Queries("embedding", [f"{path.name}[{row}]" for row in range(len(array))], array)
        else:
            kind = next((k for k, suffixes in kinds.items() if suffix in suffixes), None)
            if kind is None:
                listed = ", ".join(f"{'an' if k[0] in 'aeiou' else 'a'} {k} ({', '.join(sorted(s))})"
                                   for k, s in kinds.items())
                raise ConfigError(f"{key}={item}: not {listed} or a .npy file; {supported}".rstrip("; "))
            found[kind].append(str(path))
    used = [kind for kind, paths in found.items() if paths]
    if len(used) > 1:
        mixed = " and ".join(f"{kind}s" for kind in used)
        raise ConfigError(f"{key}={list(items)}: mixes {mixed}; an index holds one kind, query it with that kind")
    kind = used[0] if used else first
    return Queries(kind, found[kind])
