"""Which error a failure raises: a key the user typed is a ConfigError, a file, store or data the user pointed at is
a DataError (StoreError for stores and saved indexes) or MissingPathError, and a Python caller's mistake stays a
plain ValueError. The command lines print the project's errors as one line and exit 1, without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmpretrain.embeddings import StoreError, write_store
from mmpretrain.errors import ConfigError, DataError, MissingPathError, MMPretrainError
from mmpretrain.retrieval import build_index

BIN = Path(sys.executable).parent


def _store(root: Path, rows: int = 40, labels: bool = True):
    x = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
    metadata = {"id": [f"r{i}" for i in range(rows)]}
    if labels:
        metadata["label"] = [f"c{i % 4}" for i in range(rows)]
    return write_store(root, x, metadata, encoder="synthetic", normalized=False)


def _broken_index(tmp_path: Path) -> Path:
    """A saved index folder whose ids file was deleted."""
    folder = build_index(_store(tmp_path / "store"), index_key="Flat", metric="l2", progress=False).save(
        tmp_path / "index")
    (folder / "ids.npy").unlink()
    return folder


def _one_error_line(stderr: str, prog: str) -> str:
    """The error line of a command's stderr (Hydra's log lines may come before it), checked to be the only one."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{prog}: error: "), stderr[-2000:]
    return errors[0]


# ---------------------------------------------------------------------------------------------------- the classes


def test_expand_shards_raises_the_projects_errors(tmp_path: Path) -> None:
    from mmpretrain.data.shards import expand_shards

    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^data\.shards='': names no shards$"):
        expand_shards("")
    with pytest.raises(MissingPathError, match=r"input=.*1 of 2 shards do not exist \(first: .*b\.tar\)"):
        expand_shards(f"{tmp_path}/{{a,b}}.tar", key="input")
    with pytest.raises(ConfigError, match="a shard is named twice"):
        expand_shards([str(tmp_path / "a.tar")] * 2)


def test_files_and_stores_the_user_pointed_at_are_data_errors(tmp_path: Path) -> None:
    from mmpretrain.data.records import read_records
    from mmpretrain.data.sources import read_image_input
    from mmpretrain.fewshot.inputs import StoreInput
    from mmpretrain.retrieval import load_index
    from mmpretrain.retrieval.queries import load_query_embeddings
    from mmpretrain.video.io.frames import FrameShards
    from mmpretrain.video.io.manifest import read_video_manifest

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png"}\n{not json\n')
    videos = tmp_path / "videos.jsonl"
    videos.write_text('{"title": "no video key"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "manifest.json").write_text("{cut off")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    cases = [
        (lambda: list(read_records(bad)), rf"{bad}:2: invalid JSON"),
        (lambda: read_video_manifest(videos), rf"{videos}:1: missing the required key 'video'"),
        (lambda: read_image_input(empty), rf"input={empty}: the manifest lists no images"),
        (lambda: StoreInput(_store(tmp_path / "unlabelled", labels=False).root),
         r"the embedding store has no 'label' metadata column"),
        (lambda: FrameShards(tmp_path / "frames"), r"frames/manifest\.json: not valid JSON"),
        (lambda: load_query_embeddings(tmp_path / "words.npy", "query", 8), r"query=.*words\.npy: need a numeric"),
    ]
    for call, match in cases:
        with pytest.raises(DataError, match=match) as err:
            call()
        assert not isinstance(err.value, ConfigError), match
    index = _broken_index(tmp_path)
    with pytest.raises(MissingPathError, match=rf"index directory {index} is missing ids\.npy"):
        load_index(index)
    params = json.loads((index / "params.json").read_text())
    np.save(index / "ids.npy", np.arange(params["ntotal"] + 1).astype(str))
    with pytest.raises(StoreError, match=r"ids\.npy was altered|is inconsistent"):
        load_index(index)
    assert issubclass(StoreError, DataError) and not issubclass(StoreError, ConfigError)


def test_keys_the_user_typed_are_config_errors() -> None:
    from mmpretrain.data import DataHealthMonitor
    from mmpretrain.data.shards import ShardDataset
    from mmpretrain.models import create_backbone
    from mmpretrain.retrieval.choice import parse_memory
    from mmpretrain.retrieval.core import check_metric
    from mmpretrain.ssl.queue import KeyQueue
    from mmpretrain.video.io.sampling import make_sampler

    cases = [
        (lambda: parse_memory("lots"), r"memory_budget 'lots' is not a size"),
        (lambda: check_metric("cosine"), r"metric must be 'ip' or 'l2'"),
        (lambda: make_sampler(4, mode="random", train=False, rng=None), r"unknown data\.sampling 'random'"),
        (lambda: create_backbone("resnet_eighteen"), r"unknown backbone 'resnet_eighteen' \(model\.backbone\)"),
        (lambda: KeyQueue(4, 60).check_batch(8), r"model\.queue_len=60 must be divisible by the global batch size 8"),
        (lambda: DataHealthMonitor(max_failure_rate=2), r"data\.max_failure_rate=2 must be in \[0, 1\]"),
        (lambda: ShardDataset(["a.tar"], [10], dict, batch_size=4, world=2),
         r"data\.shards: 1 shards for 2 processes x 1 dataloader workers"),
    ]
    for call, match in cases:
        with pytest.raises(ConfigError, match=match):
            call()


def test_a_python_callers_mistake_stays_a_plain_value_error(tmp_path: Path) -> None:
    from mmpretrain.data.dataset import ImageDataset
    from mmpretrain.embeddings import open_store

    store = open_store(_store(tmp_path / "store").root)
    for call in (lambda: store.take([[0, 1]]), lambda: ImageDataset(["a.png", "b.png"], transform=print, labels=[0])):
        with pytest.raises(ValueError) as err:
            call()
        assert not isinstance(err.value, MMPretrainError)


# ---------------------------------------------------------------------------------------------------- one line


def test_a_broken_saved_index_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from mmpretrain.cli.index import main

    index = _broken_index(tmp_path)
    monkeypatch.setenv("MMPRETRAIN_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["eval", f"index={index}", "queries=5"])
    assert exited.value.code == 1
    line = _one_error_line(capsys.readouterr().err, "mmpretrain-index")
    assert line == f"mmpretrain-index: error: index directory {index} is missing ids.npy"


def test_a_damaged_store_is_one_line_from_the_console_script(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    shard = store.root / store.manifest["shards"][0]["embeddings"]
    shard.write_bytes(shard.read_bytes()[:-16])  # cut off: the store's own read check refuses it
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MMPRETRAIN_ROOT")}
    run = subprocess.run([str(BIN / "mmpretrain-index"), "build", f"store={store.root}",
                          f"output={tmp_path / 'index'}"], capture_output=True, text=True, cwd=tmp_path,
                         env=env | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 1
    line = _one_error_line(run.stderr, "mmpretrain-index")
    assert f"embedding store {store.root}, {shard.name}:" in line


def test_a_bad_manifest_is_one_line_naming_the_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys) -> None:
    from mmpretrain.cli.extract import main

    manifest = tmp_path / "images.jsonl"
    manifest.write_text('{"image": "a.png"}\n{"image": "b.png", "tags": "not a list"}\n')
    monkeypatch.setenv("MMPRETRAIN_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["encoder=timm:test_resnet", "random_init=true", f"input={manifest}", f"output={tmp_path / 'out'}",
              "trainer=cpu"])
    assert exited.value.code == 1
    line = _one_error_line(capsys.readouterr().err, "mmpretrain-extract")
    assert line == f"mmpretrain-extract: error: {manifest}:2: tags must be a list of strings, got 'not a list'"
