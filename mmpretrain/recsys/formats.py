"""The files recommenders read: Parquet ``ARRAY<FLOAT>`` (TorchEasyRec), EasyRec CSV with a vector string, npy + ids.

Each writer takes checked ids and a float matrix and writes one part file atomically; each reader gives back
``(ids, float32 matrix)`` so exports can be verified, appended to and fed to the item-to-item table. The feature
config snippets (EasyRec ``RawFeature``, TorchEasyRec ``raw_feature``) are written from the same settings, so
``raw_input_dim`` and the separator always match the data beside them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mmpretrain._io import atomic_path
from mmpretrain.errors import ConfigError
from mmpretrain.recsys.validation import FeatureError, check_finite, check_ids

FORMATS = ("parquet", "easyrec", "npy")
SUFFIXES = {"parquet": ".parquet", "easyrec": ".csv", "npy": ".npy"}
IDS_SUFFIX = ".ids.txt"
#: Characters that occur in printed floats, so they can separate neither values nor fields.
_NUMBER_CHARS = set("0123456789.+-eE")


def check_separators(separator: str, delimiter: str, seq_separator: str | None = None) -> None:
    """Refuse separators that would make a vector string ambiguous: empty, shared, or part of a number."""
    named = {"separator": separator, "delimiter": delimiter}
    if seq_separator is not None:
        named["seq_separator"] = seq_separator
    for name, value in named.items():
        if len(value) != 1 or value in _NUMBER_CHARS or value in '"\n\r':
            raise ConfigError(f"{name}={value!r} must be one character that cannot occur in a number or a line "
                              f"break (e.g. ',', '|', ';', tab)")
    if len(set(named.values())) != len(named):
        raise ConfigError(f"separators must differ from each other, got {named}")


@functools.cache
def _float16_strings() -> pa.Array:
    """The shortest string that reads back as each of the 65,536 float16 values, indexed by its bit pattern."""
    strings = []
    for value in np.arange(1 << 16, dtype=np.uint16).view(np.float16):
        if not np.isfinite(value):
            strings.append("nan")  # never written: exports refuse non-finite values first
            continue
        forms = (np.format_float_positional(value, unique=True, trim="-"),
                 np.format_float_scientific(value, unique=True, trim="-"))
        strings.append(min(forms, key=len))
    return pa.array(strings, type=pa.string())


def _value_strings(values: np.ndarray) -> pa.Array:
    """Every value of a float matrix as its shortest round-trip decimal string, flattened row-major.

    float32 goes through Arrow's cast (shortest float32 repr); float16 through a lookup table of shortest
    float16 reprs, so half-precision output is also shorter text, and reads back (as float32, then rounded to
    float16) as the very same value.
    """
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype == np.float16:
        return _float16_strings().take(pa.array(flat.view(np.uint16)))
    return pc.cast(pa.array(flat.astype(np.float32, copy=False)), pa.string())


def _join(strings: pa.Array, groups: int, size: int | np.ndarray, separator: str) -> pa.Array:
    """Join consecutive runs of ``strings`` (``size`` each, or per-group sizes) with ``separator``."""
    counts = np.full(groups, size, dtype=np.int64) if np.isscalar(size) else np.asarray(size, dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pc.binary_join(pa.ListArray.from_arrays(offsets, strings), separator)


def vector_strings(values: np.ndarray, separator: str = ",") -> pa.Array:
    """One string per row of ``values``: ``"0.12,-0.5,..."`` (EasyRec's ``RawFeature`` input)."""
    n, dim = values.shape
    return _join(_value_strings(values), n, dim, separator)


def sequence_strings(
    frames: np.ndarray | Sequence[np.ndarray], separator: str = ",", seq_separator: str = ";"
) -> pa.Array:
    """One string per item of per-frame vectors: frames joined by ``seq_separator``, values by ``separator``.

    ``frames`` is ``(n_items, n_frames, dim)`` or one ``(n_frames_i, dim)`` array per item.
    """
    items = list(frames)
    counts = np.array([len(f) for f in items], dtype=np.int64)
    stacked = np.concatenate(items) if items else np.empty((0, 0), dtype=np.float32)
    return _join(vector_strings(stacked, separator), len(items), counts, seq_separator)


def _list_column(values: np.ndarray) -> pa.Array:
    """A ``list<float32>`` column (Parquet ``ARRAY<FLOAT>``), one list per row."""
    n, dim = values.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32) if dim else np.zeros(n + 1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.float32).reshape(-1)))


def _write_csv(path: Path, table: pa.Table, delimiter: str) -> None:
    """Header plus rows, unquoted (ids were checked to hold no delimiter), the way EasyRec's CSVInput splits it."""
    options = pacsv.WriteOptions(delimiter=delimiter, quoting_style="none", quoting_header="none")
    with atomic_path(path) as tmp:
        pacsv.write_csv(table, tmp, write_options=options)


def write_part(
    path: Path, fmt: str, ids: np.ndarray, values: np.ndarray, *, id_column: str = "item_id",
    feature_name: str = "item_emb", separator: str = ",", delimiter: str = "\t",
) -> list[Path]:
    """Write one part of an export in ``fmt``; returns the files written (npy parts also write ``*.ids.txt``).

    Values are written at their own dtype (float16 stays float16 in npy and in the CSV digits); Parquet always
    holds ``list<float32>`` because TorchEasyRec reads ``ARRAY<FLOAT>``.
    """
    if fmt == "parquet":
        table = pa.table({id_column: pa.array(ids, type=pa.string()), feature_name: _list_column(values)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return [path]
    if fmt == "easyrec":
        table = pa.table({id_column: pa.array(ids, type=pa.string()), feature_name: vector_strings(values, separator)})
        _write_csv(path, table, delimiter)
        return [path]
    if fmt == "npy":
        ids_path = path.with_suffix(IDS_SUFFIX)
        with atomic_path(ids_path) as tmp:
            tmp.write_text("".join(f"{item}\n" for item in ids))
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(values), allow_pickle=False)
        return [path, ids_path]
    raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")


def read_part(
    path: Path, fmt: str, *, id_column: str = "item_id", feature_name: str = "item_emb", separator: str = ",",
    delimiter: str = "\t", dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a part back as ``(ids, float32 (n, dim))``, refusing rows whose vector length is not ``dim``."""
    if fmt == "npy":
        values = np.load(path, allow_pickle=False)
        ids = np.array(path.with_suffix(IDS_SUFFIX).read_text().splitlines(), dtype=str)
        if len(ids) != len(values):
            raise FeatureError(f"{path}: {len(values)} vectors but {len(ids)} ids in {path.with_suffix(IDS_SUFFIX)}")
        return ids, values.astype(np.float32)
    if fmt == "parquet":
        table = pq.read_table(path, columns=[id_column, feature_name])
        lists = table.column(feature_name).combine_chunks()
    elif fmt == "easyrec":
        options = pacsv.ParseOptions(delimiter=delimiter, quote_char=False)
        types = pacsv.ConvertOptions(column_types={id_column: pa.string(), feature_name: pa.string()})
        table = pacsv.read_csv(path, parse_options=options, convert_options=types)
        lists = pc.split_pattern(table.column(feature_name).combine_chunks(), separator)
    else:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    ids = np.asarray(table.column(id_column).to_pylist(), dtype=str)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    width = dim if dim is not None else (int(lengths[0]) if len(lengths) else 0)
    if len(lengths) and (wrong := np.flatnonzero(lengths != width)).size:
        raise FeatureError(f"{path}: item {str(ids[wrong[0]])!r} has {int(lengths[wrong[0]])} values, expected {width}")
    values = pc.cast(pc.list_flatten(lists), pa.float32()).to_numpy(zero_copy_only=False)
    return ids, values.reshape(len(ids), width)


def _proto_string(value: str) -> str:
    """A protobuf text-format string literal (JSON escapes are valid there for these characters)."""
    return json.dumps(value)


def easyrec_config(
    feature_name: str, dim: int, separator: str = ",", delimiter: str = "\t", id_column: str = "item_id",
    seq_separator: str | None = None, combiner: str = "mean",
) -> str:
    """EasyRec protobuf-text snippet: the two input fields, CSV settings and the ``RawFeature`` of the vector.

    With ``seq_separator``, the cell holds several vectors (video frames) that EasyRec splits with
    ``seq_multi_sep`` and pools with ``combiner``.
    """
    sequence = (f"    seq_multi_sep: {_proto_string(seq_separator)}\n    combiner: {_proto_string(combiner)}\n"
                if seq_separator is not None else "")
    return (
        f"# EasyRec input for the CSV files beside this file (written by mmpretrain-export); merge into your\n"
        f"# pipeline config. The vector is one STRING column; raw_input_dim must equal its length.\n"
        f"data_config {{\n"
        f"  input_fields {{ input_name: {_proto_string(id_column)} input_type: STRING }}\n"
        f"  input_fields {{ input_name: {_proto_string(feature_name)} input_type: STRING }}\n"
        f"  separator: {_proto_string(delimiter)}\n"
        f"  with_header: true\n"
        f"}}\n"
        f"feature_config {{\n"
        f"  features {{\n"
        f"    input_names: {_proto_string(feature_name)}\n"
        f"    feature_type: RawFeature\n"
        f"    separator: {_proto_string(separator)}\n"
        f"    raw_input_dim: {dim}\n"
        f"{sequence}"
        f"  }}\n"
        f"}}\n"
    )


def torcheasyrec_config(feature_name: str, dim: int) -> str:
    """TorchEasyRec protobuf-text snippet: a ``raw_feature`` over the Parquet ``ARRAY<FLOAT>`` column."""
    return (
        f"# TorchEasyRec feature for the Parquet files beside this file (written by mmpretrain-export):\n"
        f"# the column is ARRAY<FLOAT>; value_dim must equal its length.\n"
        f"feature_configs {{\n"
        f"  raw_feature {{\n"
        f"    feature_name: {_proto_string(feature_name)}\n"
        f"    expression: {_proto_string('item:' + feature_name)}\n"
        f"    value_dim: {dim}\n"
        f"  }}\n"
        f"}}\n"
    )


def write_sequence_csv(
    path: str | Path, ids: Sequence[str] | np.ndarray, frames: np.ndarray | Sequence[np.ndarray], *,
    feature_name: str = "frame_emb", id_column: str = "item_id", separator: str = ",", seq_separator: str = ";",
    delimiter: str = "\t", dtype: str = "float32", combiner: str = "mean",
) -> tuple[Path, Path]:
    """Per-frame vectors of videos as one EasyRec sequence feature: a CSV and its ``.config`` beside it.

    Args:
        path: the CSV file to write; the config goes to the same name with ``.config``.
        ids: one id per video.
        frames: ``(n_items, n_frames, dim)`` or one ``(n_frames_i, dim)`` array per video (frame counts may
            differ; the width may not).
        seq_separator: between frames (EasyRec ``seq_multi_sep``); ``separator`` between values of a frame.
        dtype: ``"float32"`` or ``"float16"`` (values rounded, and printed, at half precision).
        combiner: how EasyRec pools the frames (``mean``, ``max``, ``min``, ``sum``).

    Raises:
        FeatureError: naming the video whose frames are empty, of the wrong width, or not finite.
    """
    check_separators(separator, delimiter, seq_separator)
    checked = check_ids(ids, forbidden=delimiter)
    items = [np.asarray(f) for f in frames]
    if len(items) != len(checked):
        raise FeatureError(f"{len(items)} frame arrays but {len(checked)} ids")
    dim = items[0].shape[-1] if items else 0
    for item, array in zip(checked, items):
        if array.ndim != 2 or len(array) == 0 or array.shape[1] != dim:
            raise FeatureError(f"item {str(item)!r}: frames have shape {array.shape}, expected (n_frames >= 1, {dim})")
    with np.errstate(over="ignore"):
        items = [array.astype(dtype) for array in items]
    for item, array in zip(checked, items):
        check_finite(array[None], np.array([item]), what="frame vector")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({id_column: pa.array(checked, type=pa.string()),
                      feature_name: sequence_strings(items, separator, seq_separator)})
    _write_csv(path, table, delimiter)
    config = path.with_suffix(".config")
    with atomic_path(config) as tmp:
        tmp.write_text(easyrec_config(feature_name, dim, separator, delimiter, id_column, seq_separator, combiner))
    return path, config
