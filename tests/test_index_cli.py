"""`mmpretrain-index build|search|eval`: the issue's commands through the compose API, queries by embedding file and
by image through a real tiny encoder, recall and the recall-QPS plot, every refusal, and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import compose_cfg
from test_encoders import training_checkpoint

from mmpretrain.cli.index import index_command, main
from mmpretrain.embeddings import EmbeddingStore, StoreError, open_store, write_store
from mmpretrain.encoders import load_encoder
from mmpretrain.extraction import read_input, run_extraction
from mmpretrain.retrieval import load_index

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

ROWS, DIM, CENTERS = 3000, 32, 40


def run(tmp: Path, command: str, *overrides: str) -> dict:
    """One subcommand as the console script runs it, with the run folder under `tmp`."""
    return index_command(compose_cfg("index.yaml", [f"command={command}", *overrides], tmp))


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def clustered_store(root: Path, rows: int = ROWS, seed: int = 0) -> EmbeddingStore:
    """Gaussian blobs (unnormalized) in three shards, with an id, a path and a label (the blob) per row."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CENTERS, DIM)).astype(np.float32)
    blob = rng.integers(0, CENTERS, rows)
    x = (centers[blob] + rng.standard_normal((rows, DIM))).astype(np.float32)
    metadata = {"id": [f"r{i}" for i in range(rows)], "path": [f"img/c{b}/{i}.jpg" for i, b in enumerate(blob)],
                "label": [f"c{b}" for b in blob]}
    return write_store(root, x, metadata, encoder="synthetic-encoder", normalized=False, shard_size=rows // 3 + 1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingStore:
    return clustered_store(tmp_path_factory.mktemp("store") / "emb")


@pytest.fixture(scope="module")
def index_dir(store: EmbeddingStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's build command over the clustered store (auto picks HNSW32 at this size and tunes efSearch)."""
    tmp = tmp_path_factory.mktemp("build")
    summary = run(tmp, "build", f"store={store.root}", f"output={tmp / 'idx'}", "memory_budget=8GB")
    assert summary["index_key"] == "HNSW32" and "efSearch" in summary["search_params"]
    return tmp / "idx"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def image_index(ckpt: Path, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EmbeddingStore]:
    """The demo training images extracted with the tiny checkpoint (the store names it as its encoder), indexed."""
    tmp = tmp_path_factory.mktemp("images")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    run_extraction(load_encoder(ckpt, device="cpu"), read_input(demo_root / "train"), tmp / "emb", trainer,
                   batch_size=16, num_workers=0)
    run(tmp, "build", f"store={tmp / 'emb'}", f"output={tmp / 'idx'}")
    return tmp / "idx", open_store(tmp / "emb")


def test_build_prints_a_summary_and_saves_a_loadable_index(store: EmbeddingStore, tmp_path: Path, capsys) -> None:
    run(tmp_path, "build", f"store={store.root}", f"output={tmp_path / 'idx'}", "index_key=[IVF32,Flat]", "metric=l2",
        "target_recall=0.9", "k=5", "batch_size=700")
    summary = json_lines(capsys.readouterr().out)[-1]
    assert summary["index_key"] == "IVF32,Flat" and summary["metric"] == "l2" and summary["ntotal"] == ROWS
    assert summary["search_params"]["nprobe"] >= 1 and summary["tuned_recall"] >= 0.9
    assert summary["size_bytes"] == sum(f.stat().st_size for f in (tmp_path / "idx").iterdir())
    assert summary["build_seconds"] > 0
    index = load_index(tmp_path / "idx")
    assert (index.index_key, index.metric, index.ntotal) == ("IVF32,Flat", "l2", ROWS)
    assert index.search_params == summary["search_params"]
    assert index.store is not None and index.store.root == store.root


def test_search_by_embedding_file_prints_the_stored_row_first(
    store: EmbeddingStore, index_dir: Path, tmp_path: Path, capsys
) -> None:
    rows = [5, 2017]
    np.save(tmp_path / "q.npy", store.take(rows))
    meta = store.metadata().take(rows).to_pylist()
    run(tmp_path, "search", f"index={index_dir}", f"query={tmp_path / 'q.npy'}", "k=5")
    tables = capsys.readouterr().out.strip().split("\n\n")
    assert len(tables) == 2
    for table, row, record in zip(tables, rows, meta):
        title, header, first, *rest = table.splitlines()
        assert title == f"query q.npy[{rows.index(row)}]" and header.split() == ["rank", "score", "id", "label", "path"]
        rank, score, found, label, path = first.split()
        assert (rank, found, label, path) == ("1", record["id"], record["label"], record["path"])
        assert float(score) == pytest.approx(1.0, abs=1e-3) and len(rest) == 4

    run(tmp_path, "search", f"index={index_dir}", f"query={tmp_path / 'q.npy'}", "k=3", "json=true")
    results = json_lines(capsys.readouterr().out)
    assert [r["query"] for r in results] == ["q.npy[0]", "q.npy[1]"]
    for result, record in zip(results, meta):
        assert len(result["hits"]) == 3 and [h["rank"] for h in result["hits"]] == [1, 2, 3]
        assert {k: result["hits"][0][k] for k in ("id", "path", "label")} == record


def test_search_by_image_through_the_stores_encoder(image_index: tuple[Path, EmbeddingStore], tmp_path: Path,
                                                    capsys) -> None:
    index_dir, store = image_index
    records = store.metadata().take([3, 30]).to_pylist()
    paths = ",".join(r["path"] for r in records)
    run(tmp_path, "search", f"index={index_dir}", f"query=[{paths}]", "k=4", "json=true")
    results = json_lines(capsys.readouterr().out)
    assert [r["query"] for r in results] == [r["path"] for r in records]
    for result, record in zip(results, records):
        top = result["hits"][0]
        assert (top["id"], top["path"], top["label"]) == (record["id"], record["path"], record["label"])
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        assert result["hits"][1]["score"] < 1 - 1e-4

    folder = Path(records[0]["path"]).parent  # one class folder of the extracted images: each finds itself
    run(tmp_path, "search", f"index={index_dir}", f"query={folder}", "k=1", "json=true")
    results = json_lines(capsys.readouterr().out)
    assert len(results) == len(list(folder.glob("*.png"))) > 1
    assert all(r["hits"][0]["path"] == r["query"] for r in results)


def test_image_query_needs_an_encoder_that_loads_and_fits(
    store: EmbeddingStore, index_dir: Path, ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    image = next((demo_root / "val").rglob("*.png"))
    with pytest.raises(FileNotFoundError, match=r"names encoder 'synthetic-encoder'.*pass encoder="):
        run(tmp_path, "search", f"index={index_dir}", f"query={image}")
    with pytest.raises(ValueError, match=f"encoder={ckpt} gives 192-d embeddings but index .* holds 32-d"):
        run(tmp_path, "search", f"index={index_dir}", f"query={image}", f"encoder={ckpt}")


def test_eval_reports_recall_qps_and_plots_the_sweep(store: EmbeddingStore, index_dir: Path, tmp_path: Path,
                                                     capsys) -> None:
    run(tmp_path, "eval", f"index={index_dir}", "queries=300", "sweep=true")
    record = json_lines(capsys.readouterr().out)[-1]
    assert record["recall@10"] >= 0.9 and record["queries"] == 300 and record["index_key"] == "HNSW32"
    assert record["qps"] > 0 and record["flat_qps"] > 0
    assert record["speedup"] == pytest.approx(record["qps"] / record["flat_qps"])
    plot = tmp_path / "run" / "recall_qps.png"
    assert record["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["param"] for p in record["curve"]] == ["efSearch"] * len(record["curve"]) and len(record["curve"]) > 1
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["recall@10"] == record["recall@10"]

    np.save(tmp_path / "q.npy", store.take(np.arange(0, ROWS, 50)))
    run(tmp_path / "second", "eval", f"index={index_dir}", f"queries={tmp_path / 'q.npy'}", "k=5")
    record = json_lines(capsys.readouterr().out)[-1]
    assert record["queries"] == ROWS // 50 and record["recall@5"] >= 0.9 and "curve" not in record
    assert not (tmp_path / "second" / "run" / "recall_qps.png").exists()


@pytest.mark.parametrize(
    ("command", "overrides", "error", "match"),
    [
        ("build", ["output={tmp}/idx"], ValueError, r"build needs store=<embedding store folder>"),
        ("build", ["store={tmp}/nowhere", "output={tmp}/idx"], FileNotFoundError, r"store=.*/nowhere: folder does not"),
        ("build", ["store={store}"], ValueError, r"build needs output="),
        ("build", ["store={store}", "output={store}"], FileExistsError, r"output=.*is not an index folder"),
        ("build", ["store={store}", "output={tmp}/idx", "memory_budget=lots"], ValueError, r"memory_budget 'lots'"),
        ("search", ["query={tmp}/q.npy"], ValueError, r"search needs index=<index folder"),
        ("search", ["index={tmp}/nowhere", "query={tmp}/q.npy"], FileNotFoundError, r"index=.*/nowhere: folder"),
        ("search", ["index={index}"], ValueError,
         r"search needs query=<\.\.\.> or text=<\.\.\.>; supported: query=<image"),
        ("search", ["index={index}", "query={tmp}/gone.jpg"], FileNotFoundError, r"query=.*/gone.jpg: no such file"),
        ("search", ["index={index}", "query={tmp}/notes.txt"], ValueError, r"notes.txt: not an image .* or a \.npy"),
        ("search", ["index={index}", "query={tmp}/clip.mp4", "encoder={ckpt}"], ValueError,
         r"is an image encoder; video queries need a video-text encoder"),
        ("search", ["index={index}", "text='a red cat'", "encoder={ckpt}"], ValueError,
         r"is an image encoder; text queries need a video-text encoder"),
        ("search", ["index={index}", "text='a red cat'"], FileNotFoundError, r"names encoder .* pass encoder="),
        ("search", ["index={index}", "text=a", "query={tmp}/q.npy"], ValueError, r"query=<files> or text=<texts>, not"),
        ("search", ["index={index}", "query=[{tmp}/clip.mp4,{tmp}/a.jpg]"], ValueError, r"mixes images and videos"),
        ("search", ["index={index}", "query={tmp}/wide.npy"], ValueError, r"wide.npy: need a numeric \(n, 32\)"),
        ("search", ["index={index}", "store={other}", "query={tmp}/q.npy"], StoreError, r"fingerprint"),
        ("eval", ["index={index}", "queries=abc"], ValueError, r"queries=abc: give a number of store rows"),
        ("eval", ["index={index}", "queries={tmp}/gone.npy"], FileNotFoundError, r"queries=.*gone.npy: no such"),
        ("frobnicate", [], ValueError, r"command=frobnicate is not one of build\|search\|eval"),
    ],
)
def test_clear_errors_name_the_key_and_file(
    store: EmbeddingStore, index_dir: Path, tmp_path: Path, command: str, overrides: list[str], error: type,
    match: str, request: pytest.FixtureRequest,
) -> None:
    other = clustered_store(tmp_path / "other", rows=300, seed=1) if "{other}" in " ".join(overrides) else None
    np.save(tmp_path / "q.npy", store.take([0]))
    np.save(tmp_path / "wide.npy", np.zeros((2, DIM + 1), dtype=np.float32))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    (tmp_path / "a.jpg").write_bytes(b"\0" * 16)
    ckpt = request.getfixturevalue("ckpt") if "{ckpt}" in " ".join(overrides) else None
    values = {"tmp": tmp_path, "store": store.root, "index": index_dir, "other": other and other.root, "ckpt": ckpt}
    with pytest.raises(error, match=match):
        run(tmp_path, command, *(o.format(**values) for o in overrides))


def test_unknown_subcommand_lists_the_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate", "index=x"])
    assert exit_info.value.code == 2
    assert "unknown subcommand 'frobnicate'; choose build|search|eval" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([])
    assert "no subcommand; choose build|search|eval" in capsys.readouterr().err


def test_console_script_from_another_directory(store: EmbeddingStore, index_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "q.npy", store.take([42]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("MMPRETRAIN_ROOT", None)
    command = [str(Path(sys.executable).parent / "mmpretrain-index"), "search", f"index={index_dir}", "query=q.npy",
               "k=3", "json=true"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()  # the log goes to stderr: stdout holds only the JSON lines
    assert len(lines) == 1 and json.loads(lines[0])["hits"][0]["id"] == "r42"
    assert list((tmp_path / "logs" / "index" / "runs").glob("*/index.log"))


def test_a_moved_store_is_named_and_can_be_passed(tmp_path: Path, capsys) -> None:
    clustered_store(tmp_path / "emb", rows=300)
    run(tmp_path, "build", f"store={tmp_path / 'emb'}", f"output={tmp_path / 'idx'}")
    (tmp_path / "emb").rename(tmp_path / "moved")
    moved = open_store(tmp_path / "moved")
    np.save(tmp_path / "q.npy", moved.take([7]))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="is gone"):
        run(tmp_path, "search", f"index={tmp_path / 'idx'}", f"query={tmp_path / 'q.npy'}", "k=2")
    header, first = capsys.readouterr().out.splitlines()[1:3]
    assert header.split() == ["rank", "score", "id"] and first.split()[::2] == ["1", "r7"]
    with pytest.warns(UserWarning), pytest.raises(FileNotFoundError, match=r"emb\), which is gone; pass store="):
        run(tmp_path, "eval", f"index={tmp_path / 'idx'}", "queries=10")
    run(tmp_path, "search", f"index={tmp_path / 'idx'}", f"store={moved.root}", f"query={tmp_path / 'q.npy'}")
    record = moved.metadata().to_pylist()[7]
    assert capsys.readouterr().out.splitlines()[2].split()[2:] == [record["id"], record["label"], record["path"]]


def test_text_queries_with_commas_and_chinese_work_as_typed(video_pretrained: Path, video_demo: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """`--text "..."` and `text=...` reach the search unchanged; Chinese with the English MiniLM gets the warning."""
    from mmpretrain.cli.extract import extract

    store = tmp_path / "store"
    extract(compose_cfg("extract.yaml", [f"encoder={video_pretrained}", f"input={video_demo['val']}",
                                         f"output={store}", "trainer=cpu", "num_workers=0"], tmp_path))
    run(tmp_path, "build", f"store={store}", f"output={tmp_path / 'idx'}", "index_key=Flat", "target_recall=null")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMPRETRAIN_ROOT": str(tmp_path)}
    env.pop("HYDRA_FULL_ERROR", None)
    base = [str(Path(sys.executable).parent / "mmpretrain-index"), "search", f"index={tmp_path / 'idx'}", "k=2",
            "json=true"]
    typed = {"flag": [*base, "--text", "a red ball, moving left", "--text", "红色的球向左移动"],
             "key": [*base, "text=红色的球向左移动, 快"]}
    results = {}
    for name, args in typed.items():
        result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = (json_lines(result.stdout), result.stderr)
    queries, log = results["flag"]
    assert [q["query"] for q in queries] == ["a red ball, moving left", "红色的球向左移动"]
    assert all(len(q["hits"]) == 2 for q in queries)
    assert "are unknown to the text encoder's tokenizer" in log and "multilingual" in log
    queries, _ = results["key"]
    assert [q["query"] for q in queries] == ["红色的球向左移动, 快"]
