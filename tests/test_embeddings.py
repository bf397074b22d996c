"""Tests for the embedding store: round trips, shard order, resume, and refusal of misaligned or altered stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmpretrain.embeddings import (
    EmbeddingStore,
    StoreError,
    finalize_store,
    open_store,
    shard_done,
    shard_name,
    write_shard,
    write_store,
)

DIM = 8


def _rows(start: int, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, list]]:
    """n random unit rows plus metadata whose ids encode the global row number."""
    rng = np.random.default_rng(seed + start)
    emb = rng.standard_normal((n, DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = {
        "id": [f"item-{start + i}" for i in range(n)],
        "path": [f"/data/{start + i}.jpg" for i in range(n)],
        "label": [(start + i) % 3 for i in range(n)],
        "tags": [[f"t{j}" for j in range((start + i) % 3)] for i in range(n)],
    }
    return emb, meta


def _store(root: Path, sizes: tuple[int, ...] = (5, 3, 4), dtype: str = "float32") -> np.ndarray:
    """Write and finalize a store with the given shard sizes; returns the expected embeddings."""
    parts, start = [], 0
    for index, n in enumerate(sizes):
        emb, meta = _rows(start, n)
        write_shard(root, index, emb, meta, dtype=dtype)
        parts.append(emb)
        start += n
    finalize_store(root, encoder="test-enc", dim=DIM, dtype=dtype, normalized=True)
    return np.concatenate(parts)


def test_shard_name() -> None:
    assert shard_name(3) == ("embeddings-00003.npy", "metadata-00003.parquet")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    emb, meta = _rows(0, 25)
    store = write_store(tmp_path, emb, meta, encoder="enc", normalized=True, dtype=dtype, shard_size=10)
    assert isinstance(store, EmbeddingStore)
    assert (store.encoder, store.dim, store.dtype, store.normalized) == ("enc", DIM, dtype, True)
    assert (store.count, store.num_shards, len(store)) == (25, 3, 25)
    assert store.manifest["shards"][2]["count"] == 5
    assert store.shard_embeddings(0).dtype == np.dtype(dtype)
    out = store.embeddings()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, emb, atol=1e-3 if dtype == "float16" else 0)
    table = store.metadata()
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table.schema.field("id").type == pa.string()
    assert table.to_pydict() == meta
    assert store.ids().tolist() == meta["id"]
    reopened = open_store(tmp_path, verify="full")
    assert reopened.manifest == store.manifest


def test_iter_batches_crosses_shards(tmp_path: Path) -> None:
    expected = _store(tmp_path, sizes=(5, 3, 4))
    store = open_store(tmp_path)
    batches = list(store.iter_batches(batch_size=4, columns=("id", "tags")))
    assert [len(b[0]) for b in batches] == [4, 4, 4]
    assert all(b[0].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), expected)
    ids = [i for _, meta in batches for i in meta["id"]]
    assert ids == [f"item-{i}" for i in range(12)]
    assert batches[1][1]["tags"] == [[f"t{j}" for j in range(i % 3)] for i in range(4, 8)]
    odd = list(store.iter_batches(batch_size=5, columns=()))
    assert [len(e) for e, _ in odd] == [5, 5, 2]
    assert odd[0][1] == {}


def test_row_order_follows_shard_index_not_write_order(tmp_path: Path) -> None:
    shards = {i: _rows(10 * i, 3) for i in range(3)}
    for index in (2, 0, 1):
        write_shard(tmp_path, index, *shards[index])
    finalize_store(tmp_path, encoder="enc", dim=DIM, dtype="float32", normalized=True)
    store = open_store(tmp_path)
    assert store.ids().tolist() == [f"item-{10 * i + j}" for i in range(3) for j in range(3)]
    np.testing.assert_array_equal(store.embeddings(), np.concatenate([shards[i][0] for i in range(3)]))


def test_reads_are_memory_mapped(tmp_path: Path) -> None:
    _store(tmp_path)
    assert isinstance(open_store(tmp_path).shard_embeddings(1), np.memmap)


def test_shard_done_only_for_complete_shards(tmp_path: Path) -> None:
    emb, meta = _rows(0, 4)
    assert not shard_done(tmp_path, 0)
    write_shard(tmp_path, 0, emb, meta)
    assert shard_done(tmp_path, 0)
    # An interrupted writer leaves the parquet without the npy (the npy is renamed into place last).
    write_shard(tmp_path, 1, emb, {**meta, "id": [f"x{i}" for i in range(4)]})
    (tmp_path / shard_name(1)[0]).unlink()
    assert not shard_done(tmp_path, 1)
    with pytest.raises(StoreError, match=r"embeddings-00001\.npy.*incomplete"):
        finalize_store(tmp_path, encoder="enc", dim=DIM, dtype="float32", normalized=True)
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_shard_validates_input(tmp_path: Path) -> None:
    emb, meta = _rows(0, 4)
    with pytest.raises(StoreError, match="no 'id' column"):
        write_shard(tmp_path, 0, emb, {"path": meta["path"]})
    with pytest.raises(StoreError, match="'path' has 3 rows but embeddings have 4"):
        write_shard(tmp_path, 0, emb, {**meta, "path": meta["path"][:3]})
    bad = emb.copy()
    bad[2, 1] = np.nan
    with pytest.raises(StoreError, match=r"non-finite.*row 2"):
        write_shard(tmp_path, 0, bad, meta)
    with pytest.raises(StoreError, match=r"non-finite.*float16"):
        write_shard(tmp_path, 0, emb * 1e6, meta, dtype="float16")
    with pytest.raises(StoreError, match="unsupported dtype 'float64'"):
        write_shard(tmp_path, 0, emb, meta, dtype="float64")
    assert not shard_done(tmp_path, 0)


def test_gap_in_shards_refused(tmp_path: Path) -> None:
    for index in (0, 2):
        write_shard(tmp_path, index, *_rows(10 * index, 3))
    with pytest.raises(StoreError, match=r"embeddings-00001\.npy.*missing"):
        finalize_store(tmp_path, encoder="enc", dim=DIM, dtype="float32", normalized=True)
    assert not (tmp_path / "manifest.json").exists()


def test_duplicate_ids_refused(tmp_path: Path) -> None:
    write_shard(tmp_path, 0, *_rows(0, 3))
    write_shard(tmp_path, 1, *_rows(2, 3))  # item-2 again
    with pytest.raises(StoreError, match=r"'item-2'.*metadata-00000\.parquet, metadata-00001\.parquet"):
        finalize_store(tmp_path, encoder="enc", dim=DIM, dtype="float32", normalized=True)


def test_finalize_refuses_wrong_dim_and_dtype(tmp_path: Path) -> None:
    _store(tmp_path, sizes=(3,))
    with pytest.raises(StoreError, match=r"embeddings-00000\.npy.*expected \(n, 16\)"):
        finalize_store(tmp_path, encoder="enc", dim=16, dtype="float32", normalized=True)
    with pytest.raises(StoreError, match=r"embeddings-00000\.npy.*dtype float32, expected float16"):
        finalize_store(tmp_path, encoder="enc", dim=DIM, dtype="float16", normalized=True)


def test_tampered_npy_refused(tmp_path: Path) -> None:
    _store(tmp_path)
    path = tmp_path / "embeddings-00001.npy"
    data = np.load(path)
    data[0, 0] += 0.5
    np.save(path, data)  # same shape and dtype, different bytes
    with pytest.raises(StoreError, match=r"embeddings-00001\.npy: was altered") as info:
        open_store(tmp_path, verify="full")
    assert str(tmp_path) in str(info.value)
    assert open_store(tmp_path, verify="counts").count == 12


def test_parquet_row_dropped_refused(tmp_path: Path) -> None:
    _store(tmp_path)
    path = tmp_path / "metadata-00002.parquet"
    pq.write_table(pq.read_table(path).slice(0, 3), path)
    for verify in ("counts", "full"):
        with pytest.raises(StoreError, match=r"metadata-00002\.parquet.*has 4 rows but metadata-00002\.parquet has 3"):
            open_store(tmp_path, verify=verify)
    store = open_store(tmp_path, verify="none")
    with pytest.raises(StoreError, match=r"metadata-00002\.parquet.*manifest says 4 rows.*has 3"):
        store.metadata()


def test_npy_with_wrong_dim_refused(tmp_path: Path) -> None:
    _store(tmp_path)
    np.save(tmp_path / "embeddings-00000.npy", np.zeros((5, DIM + 1), dtype=np.float32))
    with pytest.raises(StoreError, match=r"embeddings-00000\.npy.*expected \(n, 8\)"):
        open_store(tmp_path, verify="counts")
    with pytest.raises(StoreError, match=r"embeddings-00000\.npy.*manifest\.json says float32\(5, 8\)"):
        open_store(tmp_path, verify="none").shard_embeddings(0)


def test_missing_files_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"manifest\.json is missing"):
        open_store(tmp_path)
    _store(tmp_path)
    (tmp_path / "metadata-00001.parquet").unlink()
    for verify in ("full", "counts", "none"):
        with pytest.raises(StoreError, match=r"metadata-00001\.parquet: shard file listed in manifest\.json is miss"):
            open_store(tmp_path, verify=verify)


def test_unsupported_dtype_in_manifest_refused(tmp_path: Path) -> None:
    _store(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["dtype"] = "int8"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"manifest\.json: unsupported dtype 'int8'"):
        open_store(tmp_path)


def test_take_and_row_of(tmp_path: Path) -> None:
    expected = _store(tmp_path, sizes=(5, 3, 4))
    store = open_store(tmp_path)
    rows = [11, 0, 5, 4, 7, 5]
    np.testing.assert_array_equal(store.take(rows), expected[rows])
    assert store.take([]).shape == (0, DIM)
    with pytest.raises(IndexError, match=r"\[12\]"):
        store.take([3, 12])
    found = store.row_of(["item-7", "item-0", "item-11"])
    assert found.dtype == np.int64
    assert found.tolist() == [7, 0, 11]
    with pytest.raises(KeyError, match="'nope'"):
        store.row_of(["item-1", "nope"])


def test_fingerprint_changes_with_a_shard(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    _store(tmp_path / "b")
    first = open_store(tmp_path / "a").fingerprint()
    assert first == open_store(tmp_path / "b").fingerprint()
    emb, meta = _rows(5, 3)
    write_shard(tmp_path / "a", 1, emb + 0.01, meta)
    finalize_store(tmp_path / "a", encoder="test-enc", dim=DIM, dtype="float32", normalized=True)
    assert open_store(tmp_path / "a").fingerprint() != first


def test_write_store_refuses_existing_store_unless_overwrite(tmp_path: Path) -> None:
    emb, meta = _rows(0, 25)
    write_store(tmp_path, emb, meta, encoder="enc", normalized=True, shard_size=10)
    with pytest.raises(StoreError, match="already holds a store"):
        write_store(tmp_path, emb[:5], {k: v[:5] for k, v in meta.items()}, encoder="enc", normalized=True)
    store = write_store(tmp_path, emb[:5], {k: v[:5] for k, v in meta.items()}, encoder="enc", normalized=True,
                        overwrite=True)
    assert (store.count, store.num_shards) == (5, 1)
    assert not (tmp_path / "embeddings-00002.npy").exists()
