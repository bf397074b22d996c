"""Tests for FAISS retrieval: recall against exact search, tuning, memory-budgeted auto choice, stores, save/load."""

from __future__ import annotations

import json
import types
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmpretrain import retrieval
from mmpretrain.embeddings import EmbeddingStore, StoreError, write_store
from mmpretrain.errors import ConfigError
from mmpretrain.retrieval import (
    build_index,
    build_index_from_store,
    choose_index_key,
    estimate_memory,
    evaluate_index,
    exact_search,
    load_index,
    parse_memory,
    plot_recall_qps,
    recall_at_k,
)
from mmpretrain.retrieval.index import _hnsw_parts

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM = 32


def clustered(n: int, n_queries: int = 0, dim: int = DIM, centers: int = 40, noise: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random centres; queries are fresh draws from the same blobs (never indexed)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim)).astype(np.float32)
    x = means[rng.integers(0, centers, n + n_queries)] + noise * rng.standard_normal((n + n_queries, dim))
    x = x.astype(np.float32)
    return x[:n], x[n:]


def true_ids(database: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    """Exact neighbours computed with numpy alone, as row-number strings (the default ids)."""
    if metric == "ip":
        db = database / np.linalg.norm(database, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        order = np.argsort(-(q @ db.T), axis=1)
    else:
        order = np.argsort(((queries[:, None, :] - database[None]) ** 2).sum(-1), axis=1)
    return order[:, :k].astype(str)


def make_store(root: Path, x: np.ndarray, shard_size: int = 1_500) -> EmbeddingStore:
    """A store whose ids are a shuffled numbering (so an id never equals its row) with path and label columns."""
    perm = np.random.default_rng(7).permutation(len(x))
    metadata = {
        "id": [f"vid-{p:05d}" for p in perm],
        "path": [f"/media/{p:05d}.mp4" for p in perm],
        "label": [f"class{p % 5}" for p in perm],
    }
    return write_store(root, x, metadata, encoder="test-encoder", normalized=False, shard_size=shard_size)


# ---------------------------------------------------------------------------------------------------- recall


def test_flat_recall_is_exactly_one() -> None:
    x, q = clustered(5_000, 200)
    index = build_index(x, index_key="Flat", progress=False)
    scores, ids = index.search(q, 10)
    assert ids.shape == (200, 10) and scores.dtype == np.float32
    assert recall_at_k(ids, true_ids(x, q, 10), 10) == 1.0
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # inner products, best first
    assert index.search(x[:5], 1)[1][:, 0].tolist() == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("key", ["IVF64,Flat", "HNSW32"])
def test_ivf_and_hnsw_recall_against_exact(key: str) -> None:
    x, q = clustered(5_000, 300, noise=1.2)
    index = build_index(x, index_key=key, target_recall=0.95, progress=False)
    assert index.tunable() == ("nprobe" if key.startswith("IVF") else "efSearch")
    assert [h.efConstruction for h in _hnsw_parts(index.index)] == ([80] if key == "HNSW32" else [])
    _, ids = index.search(q, 10)
    assert recall_at_k(ids, true_ids(x, q, 10), 10) >= 0.9


def test_tuning_reaches_target_recall_with_the_smallest_parameter() -> None:
    x, q = clustered(8_000, 500, noise=1.2)
    loose = build_index(x, index_key="IVF128,Flat", target_recall=0.8, progress=False)
    strict = build_index(x, index_key="IVF128,Flat", target_recall=0.97, progress=False)
    for index, target in ((loose, 0.8), (strict, 0.97)):
        tuning = index.tuning
        assert tuning["recall"] >= target and tuning["queries"] == 800
        nprobe = index.search_params["nprobe"]
        assert tuning["value"] == nprobe
        assert tuning["recall"] - 2 * tuning["recall_se"] >= target  # reached with a margin, not by luck
        if nprobe > 1:  # the value just below was tried and fell short: it is the smallest
            assert tuning["sweep"][str(nprobe - 1)][1] < target
        assert evaluate_index(index, q, 10, database=x)["recall@10"] >= target - 0.03  # fresh queries
    assert strict.search_params["nprobe"] > loose.search_params["nprobe"]


def test_recall_at_k_on_strings_and_ints() -> None:
    found = np.array([["a", "b", "c"], ["d", "e", "f"]])
    truth = np.array([["a", "c", "x"], ["f", "y", "z"]])
    assert recall_at_k(found, truth, 3) == pytest.approx(3 / 6)
    assert recall_at_k(found, truth, 1) == pytest.approx(1 / 2)
    assert recall_at_k(np.array([[3, 1], [0, 2]]), np.array([[1, -1], [2, 0]]), 2) == pytest.approx(3 / 3)
    with pytest.raises(ValueError, match="at least k"):
        recall_at_k(found, truth, 4)


def test_exact_search_streams_a_store_like_an_array(tmp_path: Path) -> None:
    x, q = clustered(3_000, 20)
    store = make_store(tmp_path / "store", x, shard_size=700)
    d_array, rows_array = exact_search(x, q, 7)
    d_store, rows_store = exact_search(store, q, 7, batch_size=500)
    np.testing.assert_array_equal(rows_array, rows_store)
    np.testing.assert_allclose(d_array, d_store, rtol=1e-5)
    assert rows_array.astype(str).tolist() == true_ids(x, q, 7).tolist()


def test_l2_metric_returns_squared_distances_and_exact_neighbours() -> None:
    x, q = clustered(3_000, 50)
    x *= np.random.default_rng(1).uniform(0.5, 3.0, (len(x), 1)).astype(np.float32)  # norms matter for l2
    index = build_index(x, metric="l2", index_key="Flat", progress=False)
    assert not index.normalize
    scores, ids = index.search(q, 5)
    want = true_ids(x, q, 5, metric="l2")
    assert recall_at_k(ids, want, 5) == 1.0
    rows = ids.astype(int)
    np.testing.assert_allclose(scores, ((q[:, None, :] - x[rows]) ** 2).sum(-1), rtol=1e-4)
    assert np.all(np.diff(scores, axis=1) >= 0)
    ivf = build_index(x, metric="l2", index_key="IVF32,Flat", progress=False)
    assert recall_at_k(ivf.search(q, 5)[1], want, 5) >= 0.9
    assert recall_at_k(ivf.search(q, 5)[1], true_ids(x, q, 5, metric="ip"), 5) < 0.9  # really l2, not cosine


# ---------------------------------------------------------------------------------------------------- auto choice


def test_parse_memory() -> None:
    assert parse_memory("8GB") == 8 * 10**9
    assert parse_memory("512MB") == 512 * 10**6
    assert parse_memory("2GiB") == 2 * 2**30
    assert parse_memory(1_000) == 1_000
    assert parse_memory(None) is None
    for bad in ("8 parsecs", "-1GB", 0):
        with pytest.raises(ValueError, match="memory_budget"):
            parse_memory(bad)


def test_auto_choice_follows_size_rules() -> None:
    assert choose_index_key(500, 64, "1GB") == "Flat"
    assert choose_index_key(5_000, 64, "1GB") == "HNSW32"
    assert choose_index_key(5_000, 64, "1GB", gpu=True) == "Flat"  # no HNSW on GPUs
    assert choose_index_key(200_000, 64, "100GB") == "HNSW32"
    assert choose_index_key(200_000, 64, "100GB", gpu=True) == "IVF2048,Flat"
    big = choose_index_key(5_000_000, 128, "1GB")
    assert big.startswith("OPQ") and "IVF16384_HNSW32" in big
    assert estimate_memory(big, 5_000_000, 128) <= 10**9


def test_auto_choice_respects_memory_budget(tmp_path: Path) -> None:
    n, dim = 12_000, 16
    x, _ = clustered(n, dim=dim, noise=0.5)
    expected = {"10MB": "HNSW32", "2MB": "IVF256,Flat", "500KB": "OPQ4_16,IVF256_HNSW32,PQ4x8"}
    for budget, key in expected.items():
        assert choose_index_key(n, dim, budget) == key
        index = build_index(x, index_key="auto", memory_budget=budget, train_sample=2_000, target_recall=None,
                            progress=False)
        assert index.index_key == key
        size = (index.save(tmp_path / budget) / retrieval.INDEX_FILE).stat().st_size
        assert size <= parse_memory(budget), (budget, key, size)
        assert abs(size - estimate_memory(key, n, dim)) <= 0.05 * size  # the estimate is what the choice trusts
    with pytest.raises(ValueError, match=r"no index for 12000 x 16 vectors fits memory_budget='100KB'.*OPQ4_16"):
        choose_index_key(n, dim, "100KB")
    with pytest.raises(ValueError, match="fits memory_budget"):
        build_index(x, memory_budget="100KB", progress=False)


# ---------------------------------------------------------------------------------------------------- stores


def test_ids_after_save_and_load_map_to_store_metadata(tmp_path: Path) -> None:
    x, _ = clustered(4_000)
    store = make_store(tmp_path / "store", x)
    index = build_index_from_store(tmp_path / "store", index_key="HNSW32", progress=False)
    assert index.store_fingerprint == store.fingerprint()
    saved = index.save(tmp_path / "index")
    index.save(tmp_path / "index")  # overwriting is atomic and leaves no temporary directories behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "store"]

    loaded = load_index(saved)  # reattaches the store it was built from, by its saved path
    assert loaded.store is not None and loaded.search_params == index.search_params
    assert (loaded.index_key, loaded.ntotal, loaded.metric) == ("HNSW32", 4_000, "ip")
    rows = np.array([0, 1, 1_499, 1_500, 3_999])  # across shard boundaries
    _, ids = loaded.search(x[rows], 3)
    expected_ids = store.ids()[rows]
    assert ids[:, 0].tolist() == expected_ids.tolist()
    records = loaded.metadata_for(ids[:, 0])
    table = store.metadata().to_pylist()
    assert records == [table[r] for r in rows]
    assert [r["path"] for r in records] == [f"/media/{i[4:]}.mp4" for i in expected_ids]
    nested = loaded.metadata_for(ids, columns=["label"])
    assert len(nested) == 5 and len(nested[0]) == 3 and set(nested[0][0]) == {"id", "label"}


def test_store_is_built_in_batches_with_results_equal_to_the_array(tmp_path: Path, monkeypatch) -> None:
    x, q = clustered(5_000, 100)
    store = make_store(tmp_path / "store", x, shard_size=1_200)
    batches: list[int] = []
    original = EmbeddingStore.iter_batches

    def spy(self, batch_size=8192, columns=("id",)):
        for chunk, meta in original(self, batch_size, columns):
            batches.append(len(chunk))
            yield chunk, meta

    monkeypatch.setattr(EmbeddingStore, "iter_batches", spy)
    monkeypatch.setattr(EmbeddingStore, "embeddings", lambda *a, **k: pytest.fail("store loaded at once"))
    from_store = build_index(store, index_key="IVF64,Flat", batch_size=700, seed=3, progress=False)
    assert max(batches) == 700 and sum(batches) == 2 * 5_000  # adds, then the tuning ground truth
    from_array = build_index(x, ids=store.ids(), index_key="IVF64,Flat", batch_size=700, seed=3, progress=False)
    assert from_store.search_params == from_array.search_params
    (s1, i1), (s2, i2) = from_store.search(q, 10), from_array.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_a_different_store_is_refused_on_load(tmp_path: Path) -> None:
    x, _ = clustered(2_000)
    build_index(make_store(tmp_path / "a", x), index_key="Flat", progress=False).save(tmp_path / "idx")
    other = make_store(tmp_path / "b", x + 0.01)
    with pytest.raises(StoreError) as error:
        load_index(tmp_path / "idx", store=other)
    message = str(error.value)
    assert str(tmp_path / "a") in message and str(other.root) in message and other.fingerprint() in message
    write_store(tmp_path / "a", x[::-1].copy(), {"id": [f"r{i}" for i in range(len(x))]}, "enc", False,
                overwrite=True)
    with pytest.raises(StoreError, match="fingerprint"):
        load_index(tmp_path / "idx")  # the saved store path now holds a different store
    assert load_index(tmp_path / "idx", store=make_store(tmp_path / "c", x)).store is not None  # same content


def test_a_misaligned_store_is_refused_before_building(tmp_path: Path) -> None:
    x, _ = clustered(2_000)
    make_store(tmp_path / "store", x, shard_size=1_000)
    shard = tmp_path / "store" / "metadata-00001.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)  # one row short: ids would shift against vectors
    with pytest.raises(StoreError, match=r"metadata-00001\.parquet"):
        build_index_from_store(tmp_path / "store", progress=False)


def test_load_refuses_a_broken_index_directory(tmp_path: Path) -> None:
    x, _ = clustered(500)
    path = build_index(x, index_key="Flat", progress=False).save(tmp_path / "idx")
    np.save(path / retrieval.IDS_FILE, np.arange(499).astype(str))
    with pytest.raises(StoreError, match=r"ids\.npy was altered"):
        load_index(path)
    params = json.loads((path / retrieval.PARAMS_FILE).read_text())
    del params["sha256"]  # an index saved before file hashes were recorded: the counts still catch it
    (path / retrieval.PARAMS_FILE).write_text(json.dumps(params))
    with pytest.warns(UserWarning, match="without file hashes"), pytest.raises(ValueError, match="inconsistent"):
        load_index(path)
    (path / retrieval.INDEX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=retrieval.INDEX_FILE):
        load_index(path)


def test_bad_inputs_are_refused_by_name() -> None:
    x, _ = clustered(1_000)
    with pytest.raises(ValueError, match="unique"):
        build_index(x, ids=["same"] * len(x), progress=False)
    with pytest.raises(ValueError, match="metric"):
        build_index(x, metric="cosine", progress=False)
    with pytest.raises(ValueError, match="index_key 'IVFoops'"):
        build_index(x, index_key="IVFoops", progress=False)
    index = build_index(x, index_key="Flat", progress=False)
    with pytest.raises(ValueError, match=r"\(q, 32\)"):
        index.search(np.zeros((2, 31), np.float32), 3)
    with pytest.raises(RuntimeError, match="no embedding store"):
        index.metadata_for(["1"])
    with pytest.raises(ConfigError, match="use_gpu=True"):  # a setting this machine cannot honour: one line
        build_index(x, use_gpu=True, progress=False)


# ---------------------------------------------------------------------------------------------------- evaluation, GPU


def test_evaluate_index_and_recall_qps_plot(tmp_path: Path) -> None:
    x, q = clustered(6_000, 300, noise=1.2)
    index = build_index(x, index_key="IVF64,Flat", progress=False)
    before = dict(index.search_params)
    report = evaluate_index(index, q, 10, database=x, sweep=True)
    assert report["recall@10"] == pytest.approx(recall_at_k(index.search(q, 10)[1], true_ids(x, q, 10), 10))
    assert report["speedup"] == pytest.approx(report["qps"] / report["flat_qps"])
    curve = report["curve"]
    assert [p["value"] for p in curve] == [1, 2, 4, 8, 16, 32, 64]
    assert curve[-1]["recall"] == 1.0 and curve[0]["recall"] < curve[-1]["recall"]
    assert index.search_params == before  # the sweep restores the tuned parameters
    png = plot_recall_qps(curve, tmp_path / "curve.png", flat_qps=report["flat_qps"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_path_gives_the_cpu_results(monkeypatch) -> None:
    """Simulated GPUs (clones on the CPU): the GPU code path must train, add, tune and search like the CPU one."""
    x, q = clustered(4_000, 100)
    cpu = build_index(x, index_key="IVF64,Flat", use_gpu=False, progress=False)
    moved: list[str] = []

    def to_gpus(index, co=None, ngpu=-1):
        moved.append(type(faiss.downcast_index(index)).__name__)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", faiss.clone_index, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", types.SimpleNamespace, raising=False)
    gpu = build_index(x, index_key="IVF64,Flat", use_gpu="auto", progress=False)
    assert gpu.on_gpu and moved[:2] == ["IndexFlat", "IndexIVFFlat"]  # k-means, then the index itself
    assert gpu.search_params == cpu.search_params
    np.testing.assert_array_equal(gpu.search(q, 10)[1], cpu.search(q, 10)[1])
    assert not build_index(x[:2_000], index_key="HNSW32", progress=False).on_gpu  # faiss has no GPU HNSW


def test_save_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path) -> None:
    import numpy as np

    from mmpretrain.retrieval import build_index

    index = build_index(np.eye(4, 8, dtype=np.float32), index_key="Flat", progress=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a saved index"):
        index.save(tmp_path / "data")
    assert (tmp_path / "data/keep.txt").read_text() == "precious"
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # replacing an earlier index is fine
    assert (tmp_path / "idx/params.json").is_file()


def test_ids_from_a_store_metadata_column_are_accepted_and_a_table_is_named() -> None:
    """`build_index(X, ids=store.metadata()["id"])` takes the Arrow column as it comes (several chunks included)."""
    import pyarrow as pa

    X = np.random.default_rng(0).random((5, 8), dtype=np.float32)
    meta = pa.concat_tables([pa.table({"id": ["a", "b"]}), pa.table({"id": ["c", "d", "e"]})])
    index = build_index(X, ids=meta["id"], index_key="Flat")
    assert index.search(X[2:3], 1)[1][0, 0] == "c"
    with pytest.raises(ValueError, match=r"ids must be one column of ids, e.g. store.metadata\(\)\['id'\]"):
        build_index(X, ids=meta, index_key="Flat")
