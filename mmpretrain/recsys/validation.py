"""Checks that run before any feature file is written, each naming the offending item id.

Recommenders read what they are given without complaint: EasyRec zero-pads a vector string that is too short
(unless its check mode is on), a NaN travels into training, and a repeated id makes two rows fight over one item.
So every vector is checked here first and refused with the id that a user can look up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmpretrain.embeddings import ID_FORBIDDEN, find_bad_id
from mmpretrain.errors import DataError

#: Characters that ids may never hold: NUL and every line break (one id per line in text files, one row per line
#: in CSV files; NUL ends strings in numpy and Arrow), the store's own rule.
LINE_BREAKS = ID_FORBIDDEN


class FeatureError(DataError):
    """Features a recommender would misread (wrong length, NaN/inf, duplicate or unwritable ids); names the id."""


def check_ids(ids: Sequence[Any] | np.ndarray, forbidden: str = "") -> np.ndarray:
    """Ids as a 1-D string array, refusing empty ids, line breaks, any of ``forbidden`` and duplicates.

    ``forbidden`` holds the characters a format uses as delimiters (a CSV field delimiter inside an id would
    split its row). The first duplicate in input order is named.
    """
    array = np.asarray(ids)
    if array.ndim != 1:
        raise FeatureError(f"ids must be 1-D, got shape {array.shape}")
    bad = find_bad_id(array)
    if bad is not None:
        raise FeatureError(f"item {bad[1]!r} at row {bad[0]}: id holds {bad[2]!r}; ids may not hold NUL or line "
                           "breaks (they would not come back exactly)")
    out = array.astype(str)
    if out.size and (lengths := np.char.str_len(out)).min() == 0:
        raise FeatureError(f"item at row {int(np.argmin(lengths))}: empty id")
    for char in forbidden:
        hit = np.char.find(out, char) >= 0
        if hit.any():
            raise FeatureError(f"item {str(out[np.argmax(hit)])!r}: id holds {char!r}, which the output format uses "
                               f"as a delimiter")
    unique, first, counts = np.unique(out, return_index=True, return_counts=True)
    if len(unique) != len(out):
        dup = unique[counts > 1][np.argmin(first[counts > 1])]
        raise FeatureError(f"item {str(dup)!r}: id appears {int(counts[unique == dup][0])} times "
                           f"({int((counts > 1).sum())} ids are duplicated in all)")
    return out


def as_matrix(vectors: np.ndarray | Sequence[Any], ids: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Vectors (a 2-D array or one 1-D vector per id) as a float32 ``(n, dim)`` matrix, checked row by row.

    Args:
        vectors: ``(n, d)`` array or a sequence of ``n`` 1-D vectors (which may differ in length: then the first
            one of a wrong length is named).
        ids: the ids of the rows, from :func:`check_ids`.
        dim: the length every vector must have; default: the most common length.

    Raises:
        FeatureError: naming the first item whose vector has the wrong length or holds NaN or inf.
    """
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        if len(vectors) != len(ids):
            raise FeatureError(f"{len(vectors)} vectors but {len(ids)} ids")
        if dim is not None and vectors.shape[1] != dim and len(ids):
            raise FeatureError(f"item {str(ids[0])!r}: vector has {vectors.shape[1]} values, expected {dim} "
                               f"(all {len(ids)} vectors have {vectors.shape[1]})")
        matrix = vectors
    else:
        rows = [np.asarray(v) for v in vectors]
        if len(rows) != len(ids):
            raise FeatureError(f"{len(rows)} vectors but {len(ids)} ids")
        if dim is None and rows:
            sizes, counts = np.unique([row.size for row in rows], return_counts=True)
            dim = int(sizes[np.argmax(counts)])
        for item, row in zip(ids, rows):
            if row.ndim != 1 or row.size != dim:
                raise FeatureError(f"item {str(item)!r}: vector has shape {row.shape}, expected ({dim},)")
        matrix = np.stack(rows) if rows else np.empty((0, dim or 0), dtype=np.float32)
    if not np.issubdtype(matrix.dtype, np.number):
        raise FeatureError(f"vectors must be numeric, got dtype {matrix.dtype}")
    matrix = np.asarray(matrix, dtype=np.float32)
    check_finite(matrix, ids)
    return matrix


def check_finite(matrix: np.ndarray, ids: np.ndarray, what: str = "vector") -> None:
    """Refuse NaN and inf (after a float16 cast, too: values past 65504 become inf), naming the first item."""
    finite = np.isfinite(matrix).reshape(len(matrix), -1).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        kind = "NaN" if np.isnan(matrix[row]).any() else "inf"
        raise FeatureError(f"item {str(ids[row])!r}: {what} holds {kind} ({int((~finite).sum())} items are not finite)")
