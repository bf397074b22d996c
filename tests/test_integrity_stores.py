"""Stores, extraction, indexes and exports: what is resumed or loaded is the thing asked for; ids are exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract import SHARD_SIZE, _Crash, _extract, _trainer, encoder, published  # noqa: F401 - fixtures

from mmpretrain.embeddings import StoreError, open_store, write_store
from mmpretrain.encoders import ImageEncoder, load_encoder
from mmpretrain.extraction import read_input, run_extraction
from mmpretrain.recsys import export_features
from mmpretrain.recsys.validation import FeatureError
from mmpretrain.retrieval import build_index, load_index


def test_resume_with_changed_weights_is_refused(encoder: ImageEncoder, published: Path, demo_root: Path,  # noqa: F811
                                                tmp_path: Path) -> None:
    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(encoder, demo_root / "train", store, trainer=_trainer(callbacks=[_Crash(at_batch=2)]))
    other = load_encoder(published, device="cpu")  # same name, path and preprocessing, other weights
    with torch.no_grad():
        next(other.backbone.parameters()).add_(0.5)
    with pytest.raises(StoreError, match=r"other settings \(weights_sha256: .*cannot be resumed"):
        _extract(other, demo_root / "train", store)
    changed = load_encoder(published, device="cpu")
    changed.preprocessing = dict(changed.preprocessing, crop_pct=0.5)
    with pytest.raises(StoreError, match=r"preprocessing"):
        _extract(changed, demo_root / "train", store)
    assert _extract(other, demo_root / "train", store, overwrite=True)["count"] == 48


def test_overwrite_never_deletes_the_input(encoder: ImageEncoder, demo_root: Path, tmp_path: Path) -> None:  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(demo_root / "train", data)
    rows = [{"image": str(p.relative_to(data))} for p in sorted(data.rglob("*.png"))]
    manifest = data / "manifest.json"
    manifest.write_text(json.dumps(rows))
    with pytest.raises(StoreError, match=r"is the input's own folder"):
        _extract(encoder, manifest, data, overwrite=True)
    assert json.loads(manifest.read_text()) == rows
    out = tmp_path / "out"  # an unrelated manifest.json in the output is not the extraction's to delete
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(rows))
    with pytest.raises(StoreError, match="not written by a resumable extraction"):
        _extract(encoder, manifest, out)
    _extract(encoder, manifest, tmp_path / "fresh")
    assert json.loads(manifest.read_text()) == rows


@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "a\u2028b", "a\x85b", "a\rb"])
def test_ids_with_nul_or_line_breaks_are_refused_everywhere(tmp_path: Path, bad: str) -> None:
    vectors = np.eye(2, dtype=np.float32)
    with pytest.raises(StoreError, match=r"id .* at row 1 holds"):
        write_store(tmp_path / "s", vectors, {"id": ["a", bad]}, encoder="x", normalized=False)
    with pytest.raises(StoreError, match=r"at row 1 holds"):
        build_index(vectors, ids=["a", bad], index_key="Flat")
    with pytest.raises(FeatureError, match=r"at row 1: id holds"):
        export_features(vectors, tmp_path / "e", ids=["a", bad], format="npy")
    rows = read_input(_manifest(tmp_path, ["a", bad]))
    with pytest.raises(StoreError, match=r"at row 1 holds"):
        run_extraction(None, rows, tmp_path / "out", None)  # refused before the encoder or trainer is touched


def _manifest(tmp_path: Path, ids: list[str]) -> Path:
    from PIL import Image

    path = tmp_path / "images.jsonl"
    for i in range(len(ids)):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    path.write_text("".join(json.dumps({"image": f"{i}.png", "id": item}) + "\n" for i, item in enumerate(ids)))
    return path


def test_int_ids_come_back_as_ints(tmp_path: Path) -> None:
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ids = np.array([10, 20, 30, 40, 2**40], dtype=np.int64)
    index = build_index(vectors, ids=ids, index_key="Flat")
    _, found = index.search(vectors, k=1)
    assert found.dtype == np.int64 and found[:, 0].tolist() == ids.tolist()
    index.save(tmp_path / "idx")
    _, again = load_index(tmp_path / "idx").search(vectors, k=1)
    assert again.dtype == np.int64 and again[:, 0].tolist() == ids.tolist()


def test_quotes_in_ids_raise_the_projects_error(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match=r"""item 'say "hi"'.*'"'"""):
        export_features(np.eye(2, dtype=np.float32), tmp_path / "e", ids=["a", 'say "hi"'], format="easyrec")


def test_export_json_cannot_steer_deletion_outside_the_export(tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_features(np.eye(3, dtype=np.float32), out, ids=["a", "b", "c"], format="parquet")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    manifest = json.loads((out / "export.json").read_text())
    manifest["parts"][0]["file"] = "../victim"
    (out / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureError, match=r"export\.json: parts\[0\]\.file = '\.\./victim' is not a file"):
        export_features(np.eye(3, dtype=np.float32), out, ids=["a", "b", "c"], format="parquet", overwrite=True)
    assert victim.read_text() == "precious"


def test_incremental_export_refuses_a_store_of_another_folder(encoder: ImageEncoder, demo_root: Path,  # noqa: F811
                                                              tmp_path: Path) -> None:
    train, val = tmp_path / "train", tmp_path / "val"
    _extract(encoder, demo_root / "train", train)
    _extract(encoder, demo_root / "val", val)
    assert open_store(train).id_source == str((demo_root / "train").resolve())
    shared = set(open_store(train).ids().tolist()) & set(open_store(val).ids().tolist())
    assert shared  # circle/00.png in both: the same id for two different images
    out = tmp_path / "export"
    export_features(train, out, format="npy")
    with pytest.raises(FeatureError, match=r"ids are relative to .*val.*allow_other_source=true"):
        export_features(val, out, incremental=True)
    summary = export_features(val, out, incremental=True, allow_other_source=True)
    assert summary["changed"] == len(shared)
    assert read_input(demo_root / "val").root == demo_root / "val"


def _small_store(root: Path, **extra: object):
    rng = np.random.default_rng(0)
    return write_store(root, rng.standard_normal((40, 8)).astype(np.float32), {"id": [f"r{i}" for i in range(40)]},
                       encoder="synthetic", normalized=False, shard_size=20, extra=extra)


def test_load_index_checks_the_store_files_and_its_own(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = _small_store(tmp_path / "store")
    build_index(store, index_key="Flat").save(tmp_path / "idx")
    shard = tmp_path / "store" / "metadata-00001.parquet"  # same count, other rows: counts alone cannot tell
    table = pq.read_table(shard)
    pq.write_table(pa.table({"id": table.column("id").to_pylist()[::-1]}), shard)
    with pytest.raises(StoreError, match=r"metadata-00001\.parquet.*altered"):
        load_index(tmp_path / "idx")
    ids_file = tmp_path / "idx" / "ids.npy"
    np.save(ids_file, np.array([f"x{i}" for i in range(40)]), allow_pickle=False)
    with pytest.raises(StoreError, match=r"ids\.npy was altered"):
        load_index(tmp_path / "idx", store=tmp_path / "store")


def test_search_never_downloads_an_encoder_a_store_names_by_url(tmp_path: Path, demo_root: Path) -> None:
    from test_index_cli import run

    url = "http://127.0.0.1:9/evil/model.safetensors"
    store = _small_store(tmp_path / "store", encoder_source=url)
    build_index(store, index_key="Flat").save(tmp_path / "idx")
    image = next((demo_root / "val").rglob("*.png"))
    with pytest.raises(StoreError, match=rf"manifest\.json: names encoder '{url}', a URL.*pass encoder="):
        run(tmp_path, "search", f"index={tmp_path / 'idx'}", f"query={image}")


@pytest.mark.parametrize("errno_code", [28, None])
def test_write_store_on_a_full_disk_names_the_file_and_leaves_no_shard(tmp_path: Path, monkeypatch,
                                                                        errno_code: int | None) -> None:
    """np.save on a full disk: ENOSPC, or numpy's own "256000 requested and 4064 written" (no errno)."""
    import os

    from mmpretrain.errors import WriteError

    real_save = np.save

    def full(file, array, allow_pickle=True):
        file.write(b"\x93NUMPY" + bytes(4058))  # a few blocks land, then the disk is full
        if errno_code is None:
            raise OSError("256000 requested and 4064 written")
        raise OSError(errno_code, os.strerror(errno_code))

    monkeypatch.setattr(np, "save", full)
    store = tmp_path / "store"
    with pytest.raises(WriteError) as info:
        write_store(store, np.ones((500, 128), np.float32), {"id": [str(i) for i in range(500)]}, "enc", True)
    message = str(info.value)
    assert str(store / "embeddings-00000.npy") in message
    if errno_code is None:
        assert "256000 requested and 4064 written" in message
    else:
        assert f"{500 * 128 * 4 + 128} bytes are needed" in message and "bytes are free on" in message
    assert os.listdir(store) == []  # no shard, no temporary, no manifest under any name
    monkeypatch.setattr(np, "save", real_save)
    assert len(write_store(store, np.ones((5, 4), np.float32), {"id": list("abcde")}, "enc", True)) == 5
