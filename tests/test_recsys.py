"""Tests for recommendation features: formats, saved projections, item-to-item tables, incremental export, refusals."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mmpretrain.embeddings import EmbeddingStore, write_store
from mmpretrain.errors import ConfigError
from mmpretrain.recsys import (
    FeatureError,
    export_features,
    fit_projection,
    item_to_item,
    load_projection,
    prepare_features,
    read_features,
    write_sequence_csv,
)
from mmpretrain.recsys.formats import read_part, write_part

pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def vectors(n: int, dim: int = 16, seed: int = 0, centers: int = 8) -> np.ndarray:
    """Clustered float32 vectors (anisotropic, so PCA axes are well separated)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)) * 3
    scale = np.linspace(2.0, 0.2, dim)
    return (means[rng.integers(0, centers, n)] + rng.standard_normal((n, dim)) * scale).astype(np.float32)


def ids_of(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def store(path: Path, x: np.ndarray, ids: list[str]) -> EmbeddingStore:
    return write_store(path, x, {"id": ids}, encoder="test", normalized=False, shard_size=64)


def read_csv_rows(path: Path, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """A CSV as a plain reader sees it (no Arrow): header and rows split on the delimiter alone."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE))
    return rows[0], rows[1:]


def brute_force(x: np.ndarray, ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours by numpy over the full matrix, the item itself excluded."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order], np.take_along_axis(sims, order, axis=1)


# ---------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_csv_vector_strings_parse_back_to_the_arrays(tmp_path: Path, dtype: str) -> None:
    x = vectors(50, dim=12) * np.float32(10.0) ** np.random.default_rng(1).integers(-6, 4, (50, 12))
    x[0, 0], x[1, 1] = 0.0, -0.0
    values = x.astype(dtype)
    ids = np.array(ids_of(50))
    write_part(tmp_path / "part.csv", "easyrec", ids, values, separator="|", delimiter="\t")
    header, rows = read_csv_rows(tmp_path / "part.csv", "\t")
    assert header == ["item_id", "item_emb"]
    assert [row[0] for row in rows] == ids.tolist()
    parsed = np.array([[np.float32(v) for v in row[1].split("|")] for row in rows], dtype=np.float32)
    assert parsed.shape == (50, 12)
    # float32 strings are exact; float16 strings read as float32 round to the same half-precision value
    np.testing.assert_array_equal(parsed.astype(dtype), values)
    if dtype == "float16":  # shortest half-precision digits: shorter text than the same values as float32
        write_part(tmp_path / "wide.csv", "easyrec", ids, values.astype(np.float32), separator="|")
        assert (tmp_path / "part.csv").stat().st_size < 0.8 * (tmp_path / "wide.csv").stat().st_size
    back_ids, back = read_part(tmp_path / "part.csv", "easyrec", separator="|", delimiter="\t", dim=12)
    assert back_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(back.astype(dtype), values)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_parquet_schema_is_string_ids_and_float_arrays(tmp_path: Path, dtype: str) -> None:
    x = vectors(80)
    summary = export_features(x, tmp_path / "out", ids=ids_of(80), format="parquet", dim=6, dtype=dtype)
    schema = pq.read_schema(tmp_path / "out" / summary["files"][0])
    assert schema.names == ["item_id", "item_emb"]
    assert schema.field("item_id").type == pa.string()
    assert schema.field("item_emb").type == pa.list_(pa.float32())
    table = pq.read_table(tmp_path / "out" / summary["files"][0])
    expected = prepare_features(x, load_projection(tmp_path / "out"), normalize=True, dtype=dtype)
    np.testing.assert_array_equal(np.array(table.column("item_emb").to_pylist(), dtype=np.float32),
                                  expected.astype(np.float32))
    config = (tmp_path / "out/features.config").read_text()
    assert 'expression: "item:item_emb"' in config and re.search(r"value_dim: 6\b", config)


def test_easyrec_config_matches_the_csv(tmp_path: Path) -> None:
    summary = export_features(vectors(40), tmp_path / "out", ids=ids_of(40), format="easyrec", dim=5,
                              separator="|", delimiter=",")
    config = Path(summary["config"]).read_text()
    feature = re.search(r"features \{(.*?)\}", config, re.S).group(1)
    assert re.search(r'input_names: "item_emb"', feature)
    assert re.search(r"feature_type: RawFeature", feature)
    assert re.search(r"raw_input_dim: (\d+)", feature).group(1) == "5"
    assert re.search(r'separator: "(.*?)"', feature).group(1) == "|"
    data = re.search(r"data_config \{(.*)\n\}", config, re.S).group(1)
    assert re.findall(r'input_name: "(\w+)" input_type: STRING', data) == ["item_id", "item_emb"]
    assert re.search(r'\n  separator: "(.*?)"', data).group(1) == ","
    header, rows = read_csv_rows(tmp_path / "out" / summary["files"][0], ",")
    assert header == ["item_id", "item_emb"] and {len(row[1].split("|")) for row in rows} == {5}


def test_npy_pair_holds_the_matrix_and_ids(tmp_path: Path) -> None:
    x = vectors(30)
    summary = export_features(x, tmp_path / "out", ids=ids_of(30), format="npy", dtype="float16", normalize=False)
    matrix = np.load(tmp_path / "out" / summary["files"][0], allow_pickle=False)
    assert summary["files"][1].endswith(".ids.txt") and summary["config"] is None
    assert (tmp_path / "out" / summary["files"][1]).read_text().splitlines() == ids_of(30)
    assert matrix.dtype == np.float16 and matrix.shape == (30, 16)
    np.testing.assert_array_equal(matrix, x.astype(np.float16))  # no dim: no projection


def test_sequence_feature_of_video_frames(tmp_path: Path) -> None:
    frames = vectors(4 * 3, dim=5).reshape(4, 3, 5)
    csv_path, config_path = write_sequence_csv(tmp_path / "frames.csv", ids_of(4, "v"), frames)
    header, rows = read_csv_rows(csv_path, "\t")
    assert header == ["item_id", "frame_emb"]
    parsed = np.array([[[float(v) for v in frame.split(",")] for frame in row[1].split(";")] for row in rows],
                      dtype=np.float32)
    np.testing.assert_array_equal(parsed, frames)
    config = config_path.read_text()
    assert re.search(r"raw_input_dim: 5\b", config) and 'seq_multi_sep: ";"' in config
    assert 'combiner: "mean"' in config
    ragged = [frames[0], frames[1, :1], frames[2, :2]]
    csv_path, _ = write_sequence_csv(tmp_path / "ragged.csv", ["a", "b", "c"], ragged, dtype="float16")
    _, rows = read_csv_rows(csv_path, "\t")
    assert [row[1].count(";") for row in rows] == [2, 0, 1]
    with pytest.raises(FeatureError, match=r"item 'b': frames have shape \(1, 4\)"):
        write_sequence_csv(tmp_path / "bad.csv", ["a", "b"], [frames[0], frames[1, :1, :4]])
    nan = frames.copy()
    nan[2, 1, 3] = np.nan
    with pytest.raises(FeatureError, match="item 'v2': frame vector holds NaN"):
        write_sequence_csv(tmp_path / "nan.csv", ids_of(4, "v"), nan)


# ---------------------------------------------------------------------------------------------------- projection


def test_pca_matches_the_data_and_whitening_gives_identity_covariance() -> None:
    x = vectors(400, dim=16)
    pca = fit_projection(x, dim=6)
    centered = x - x.mean(axis=0)
    singular = np.linalg.svd(centered, compute_uv=False)
    np.testing.assert_allclose(pca.variances, singular[:6] ** 2 / (len(x) - 1), rtol=1e-5)
    np.testing.assert_allclose(pca.components.T @ pca.components, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(np.cov(pca.transform(x), rowvar=False), np.diag(pca.variances), atol=1e-3)
    white = fit_projection(x, dim=6, whiten=True)
    np.testing.assert_allclose(np.cov(white.transform(x), rowvar=False), np.eye(6), atol=1e-4)
    assert white.fingerprint != pca.fingerprint


def test_saved_projection_reproduces_its_output_on_new_items(tmp_path: Path) -> None:
    x, new = vectors(200, seed=0), vectors(20, seed=5) + 1.0
    export_features(x, tmp_path / "out", ids=ids_of(200), dim=4, whiten=True, fit_sample=150)
    assert (tmp_path / "out/projection.npz").is_file() and (tmp_path / "out/projection.json").is_file()
    saved = load_projection(tmp_path / "out/projection.json")
    summary = export_features(new, tmp_path / "out", ids=ids_of(20, "new"), incremental=True)
    assert summary["written"] == 20 and summary["projection"]["fingerprint"] == saved.fingerprint
    got_ids, got = read_features(tmp_path / "out")
    np.testing.assert_allclose(got[got_ids.tolist().index("new0"):], prepare_features(new, saved), rtol=1e-6)
    refit = fit_projection(np.concatenate([x, new]), dim=4, whiten=True)
    assert not np.allclose(prepare_features(new, refit), prepare_features(new, saved), atol=1e-3)
    with np.load(tmp_path / "out/projection.npz") as arrays:
        tampered = {name: arrays[name] for name in arrays.files}
    tampered["mean"] = tampered["mean"] + 1
    np.savez(tmp_path / "out/projection.npz", **tampered)
    with pytest.raises(ValueError, match=r"does not match projection\.json"):
        load_projection(tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- item-to-item


def test_item_to_item_equals_brute_force_and_never_holds_the_item(tmp_path: Path) -> None:
    x = vectors(300)
    x[299] = x[0]  # an identical vector under another id ties with the item itself
    ids = ids_of(300)
    summary = item_to_item(x, tmp_path / "i2i.parquet", ids, k=10)
    assert summary["index_key"] == "Flat" and summary["rows"] == 3000
    table = pq.read_table(tmp_path / "i2i.parquet")
    assert table.schema.names == ["item_id", "neighbor_id", "score", "rank"]
    items, found = np.array(table.column("item_id").to_pylist()), np.array(table.column("neighbor_id").to_pylist())
    assert not (items == found).any()
    want_ids, want_scores = brute_force(x, ids, 10)
    # the twins item0/item299 tie as neighbours of every other item, so compare sets and the score order
    assert [set(row) for row in found.reshape(300, 10).tolist()] == [set(row) for row in want_ids.tolist()]
    scores = np.array(table.column("score")).reshape(300, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert np.array(table.column("rank")).reshape(300, 10).tolist() == [list(range(1, 11))] * 300
    assert found[items == "item0"][0] == "item299"
    item_to_item(x, tmp_path / "i2i.csv", ids, k=10)
    csv_table = pacsv.read_csv(tmp_path / "i2i.csv")
    assert csv_table.column("neighbor_id").to_pylist() == found.tolist()


def test_item_to_item_through_an_ivf_index_excludes_the_item(tmp_path: Path) -> None:
    x = vectors(3000, dim=16, centers=30)
    ids = ids_of(3000)
    summary = item_to_item(x, tmp_path / "i2i.parquet", ids, k=5, index_key="IVF32,Flat", target_recall=0.95,
                           batch_size=700)
    assert summary["search_params"]["nprobe"] >= 1
    table = pq.read_table(tmp_path / "i2i.parquet")
    items, found = np.array(table.column("item_id").to_pylist()), np.array(table.column("neighbor_id").to_pylist())
    assert not (items == found).any() and len(items) == 3000 * 5
    want_ids, _ = brute_force(x, ids, 5)
    hits = sum(len(set(f) & set(w)) for f, w in zip(found.reshape(3000, 5).tolist(), want_ids.tolist()))
    assert hits / want_ids.size > 0.9


def test_threshold_drops_low_scores(tmp_path: Path) -> None:
    x = vectors(200)
    ids = ids_of(200)
    _, want_scores = brute_force(x, ids, 8)
    threshold = float(np.median(want_scores))
    summary = item_to_item(x, tmp_path / "i2i.parquet", ids, k=8, threshold=threshold)
    table = pq.read_table(tmp_path / "i2i.parquet")
    scores = np.array(table.column("score"))
    assert scores.min() >= threshold and summary["rows"] == int((want_scores >= threshold).sum())
    assert 0 < summary["rows"] < 200 * 8


# ---------------------------------------------------------------------------------------------------- incremental


def test_incremental_export_writes_only_new_and_changed_items(tmp_path: Path) -> None:
    x = vectors(100)
    ids = ids_of(100)
    first = export_features(store(tmp_path / "a", x, ids), tmp_path / "out", format="easyrec", dim=6, i2i_k=3)
    assert first["written"] == 100 and first["i2i"]["rows"] == 300
    changed = x[:90].copy()
    changed[[3, 40, 77]] += 0.5
    later = np.concatenate([changed, vectors(10, seed=9)])
    later_ids = ids[:90] + ids_of(10, "new")
    second = export_features(store(tmp_path / "b", later, later_ids), tmp_path / "out", format="easyrec",
                             incremental=True)
    assert (second["written"], second["new"], second["changed"], second["unchanged"]) == (13, 10, 3, 87)
    assert second["items"] == 110 and second["i2i"]["rows"] == 330  # table inherited and rebuilt over all items
    manifest = json.loads((tmp_path / "out/export.json").read_text())
    assert [part["file"] for part in manifest["parts"]] == ["features-00001.csv", "features-00002.csv"]
    fresh_ids, _ = read_part(tmp_path / "out/features-00001.csv", "easyrec", dim=6)
    assert sorted(fresh_ids.tolist()) == sorted(["item3", "item40", "item77", *ids_of(10, "new")])
    assert not (tmp_path / "out/features-00000.csv").exists()
    all_ids, all_values = read_features(tmp_path / "out")
    assert sorted(all_ids.tolist()) == sorted(ids + ids_of(10, "new"))
    expected = prepare_features(changed[40:41], load_projection(tmp_path / "out"))
    np.testing.assert_allclose(all_values[all_ids.tolist().index("item40")], expected[0], rtol=1e-6)
    hashes = pq.read_table(tmp_path / "out" / manifest["items"])
    assert hashes.num_rows == 110 and set(hashes.column_names) == {"item_id", "content_hash", "part"}
    again = export_features(store(tmp_path / "c", later, later_ids), tmp_path / "out", format="easyrec",
                            incremental=True)
    assert again["written"] == 0 and again["files"] == second["files"]


def test_appending_with_other_settings_is_refused_naming_them(tmp_path: Path) -> None:
    x = vectors(60)
    export_features(x, tmp_path / "out", ids=ids_of(60), dim=4)
    export_features(vectors(60, seed=3), tmp_path / "other", ids=ids_of(60), dim=4)
    new = vectors(5, seed=4)
    with pytest.raises(FeatureError, match=r"other/projection.json \(fingerprint [0-9a-f]{12}\).*written with "
                                           r"projection .*out/projection.json"):
        export_features(new, tmp_path / "out", ids=ids_of(5, "n"), incremental=True,
                        projection=tmp_path / "other/projection.json")
    with pytest.raises(FeatureError, match="this run asks for dim=8"):
        export_features(new, tmp_path / "out", ids=ids_of(5, "n"), incremental=True, dim=8)
    with pytest.raises(FeatureError, match="written with dtype='float32', this run asks for dtype='float16'"):
        export_features(new, tmp_path / "out", ids=ids_of(5, "n"), incremental=True, dtype="float16")
    with pytest.raises(FeatureError, match="already holds an export"):
        export_features(new, tmp_path / "out", ids=ids_of(5, "n"), dim=4)
    with pytest.raises(FeatureError, match=r"item 'n0': vector has 12 values but the projection expects 16"):
        export_features(new[:, :12], tmp_path / "out", ids=ids_of(5, "n"), incremental=True)
    replaced = export_features(new, tmp_path / "out", ids=ids_of(5, "n"), dim=4, overwrite=True)
    assert replaced["items"] == 5 and read_features(tmp_path / "out")[0].tolist() == ids_of(5, "n")


# ---------------------------------------------------------------------------------------------------- refusals


def test_wrong_vector_length_is_refused_naming_the_item(tmp_path: Path) -> None:
    rows = list(vectors(5, dim=8))
    rows[3] = rows[3][:7]  # EasyRec would zero-pad this one silently
    with pytest.raises(FeatureError, match=r"item 'item3': vector has shape \(7,\), expected \(8,\)"):
        export_features(rows, tmp_path / "out", ids=ids_of(5), format="easyrec")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_naming_the_item(tmp_path: Path, bad: float) -> None:
    x = vectors(10)
    x[6, 2] = bad
    kind = "NaN" if np.isnan(bad) else "inf"
    with pytest.raises(FeatureError, match=f"item 'item6': vector holds {kind}"):
        export_features(x, tmp_path / "out", ids=ids_of(10))


def test_duplicate_ids_are_refused_naming_the_id(tmp_path: Path) -> None:
    ids = ids_of(10)
    ids[7] = "item2"
    with pytest.raises(FeatureError, match="item 'item2': id appears 2 times"):
        export_features(vectors(10), tmp_path / "out", ids=ids)


def test_unwritable_values_and_ids_are_refused_naming_the_item(tmp_path: Path) -> None:
    x = vectors(10)
    x[4] *= 1e5  # fine in float32, inf in float16
    with pytest.raises(FeatureError, match="item 'item4': exported float16 vector holds inf"):
        export_features(x, tmp_path / "out", ids=ids_of(10), dtype="float16", normalize=False)
    with pytest.raises(FeatureError, match=r"item 'a\\tb': id holds '\\t'"):
        export_features(vectors(2), tmp_path / "out", ids=["ok", "a\tb"], format="easyrec")
    with pytest.raises(ConfigError, match="separator"):
        export_features(vectors(2), tmp_path / "out", ids=["a", "b"], format="easyrec", separator=".")


def test_a_short_row_in_a_csv_is_refused_when_read(tmp_path: Path) -> None:
    write_part(tmp_path / "part.csv", "easyrec", np.array(["a", "b"]), vectors(2, dim=4))
    lines = (tmp_path / "part.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]
    (tmp_path / "part.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(FeatureError, match="item 'b' has 3 values, expected 4"):
        read_part(tmp_path / "part.csv", "easyrec", dim=4)
