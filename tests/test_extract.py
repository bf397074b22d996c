"""mmpretrain-extract: input order across processes, resume, corrupt files, tamper checks and the entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import compose_cfg
from test_encoders import training_checkpoint

import mmpretrain.encoders as encoders
import mmpretrain.extraction as extraction
from mmpretrain import hub
from mmpretrain.cli.extract import extract
from mmpretrain.embeddings import StoreError, open_store, shard_name
from mmpretrain.encoders import ImageEncoder, load_encoder
from mmpretrain.extraction import FAILED_FILE, read_input, run_extraction

SHARD_SIZE = 20  # the 48 demo training images make 3 shards: 20, 20, 8


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    hub.publish(training_checkpoint(root / "train.ckpt"), root / "published", name="tiny_moby")
    return root / "published"


@pytest.fixture(scope="module")
def encoder(published: Path) -> ImageEncoder:
    return load_encoder(published, device="cpu")


def _overrides(published: Path, source: Path, output: Path, *extra: str, trainer: str = "cpu") -> list[str]:
    return [
        f"encoder={published}",
        f"input={source}",
        f"output={output}",
        f"trainer={trainer}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "num_workers=0",
        "batch_size=6",
        f"shard_size={SHARD_SIZE}",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(published: Path, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-process store of the demo training images, made through the Hydra entry point (compose API)."""
    out = tmp_path_factory.mktemp("reference")
    cfg = compose_cfg("extract.yaml", _overrides(published, demo_root / "train", out / "store"), out)
    summary = extract(cfg)
    assert summary == {"output": str(out / "store"), "count": 48, "failed": 0, "dim": 192, "shards": 3,
                       "dtype": "float32"}
    return out / "store"


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def _extract(encoder: ImageEncoder, source: Path, output: Path, trainer: pl.Trainer | None = None, **kwargs):
    kwargs = {"batch_size": 6, "num_workers": 0, "shard_size": SHARD_SIZE, **kwargs}
    return run_extraction(encoder, read_input(source), output, trainer or _trainer(), **kwargs)


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = open_store(a), open_store(b)
    assert sa.count == sb.count and sa.num_shards == sb.num_shards
    np.testing.assert_array_equal(sa.ids(), sb.ids())
    np.testing.assert_allclose(sa.embeddings(), sb.embeddings(), atol=1e-5)


def test_store_rows_follow_the_input_order(reference: Path, encoder: ImageEncoder, demo_root: Path) -> None:
    source = read_input(demo_root / "train")
    store = open_store(reference)
    assert (store.encoder, store.dim, store.dtype, store.normalized) == ("tiny_moby", 192, "float32", True)
    assert [s["count"] for s in store.manifest["shards"]] == [20, 20, 8]
    meta = store.metadata().to_pydict()
    assert meta["id"] == source.ids == sorted(source.ids)
    assert meta["id"][0] == "circle/00000.png"
    assert meta["label"] == [i.split("/")[0] for i in source.ids]
    assert meta["path"] == [str(demo_root / "train" / i) for i in source.ids]
    np.testing.assert_allclose(store.embeddings(), encoder.encode_images(source.paths), atol=1e-5)
    assert (reference / FAILED_FILE).read_text() == ""


def test_file_list_and_manifest_inputs(encoder: ImageEncoder, demo_root: Path, tmp_path: Path) -> None:
    shutil.copytree(demo_root / "val", tmp_path / "images")
    images = sorted((tmp_path / "images").rglob("*.png"))[::3]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"images/{p.parent.name}/{p.name}\t{p.parent.name}\n" for p in reversed(images)))
    _extract(encoder, listing, tmp_path / "from_list", dtype="float16")
    store = open_store(tmp_path / "from_list")
    meta = store.metadata().to_pydict()
    assert store.dtype == "float16"
    assert meta["id"] == [f"images/{p.parent.name}/{p.name}" for p in reversed(images)]
    assert meta["label"] == [p.parent.name for p in reversed(images)]
    np.testing.assert_allclose(store.embeddings(), encoder.encode_images(images[::-1]), atol=2e-3)

    manifest = tmp_path / "images.jsonl"
    records = [{"id": f"item-{i}", "image": str(p), "tags": ["demo", p.parent.name]} for i, p in enumerate(images)]
    manifest.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    _extract(encoder, manifest, tmp_path / "from_manifest")
    meta = open_store(tmp_path / "from_manifest").metadata().to_pydict()
    assert meta["id"] == [f"item-{i}" for i in range(len(images))]
    assert meta["tags"] == [["demo", p.parent.name] for p in images]
    assert "label" not in meta

    manifest.write_text(json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"images\.jsonl:1: missing 'image'"):
        read_input(manifest)
    listing.write_text(f"{images[0]}\n{images[0]}\n")
    with pytest.raises(ValueError, match="appears twice"):
        read_input(listing)


def _corrupt_inputs(demo_root: Path, folder: Path) -> tuple[list[str], list[str]]:
    """Copy demo images and add a truncated PNG and a zero-byte JPEG; return (good ids, bad ids) in input order."""
    shutil.copytree(demo_root / "train", folder)
    real = (folder / "circle" / "00000.png").read_bytes()
    (folder / "circle" / "00003b.png").write_bytes(real[: len(real) // 2])
    (folder / "square" / "00000b.jpg").write_bytes(b"")
    ids = read_input(folder).ids
    bad = ["circle/00003b.png", "square/00000b.jpg"]
    return [i for i in ids if i not in bad], bad


def test_corrupt_images_are_listed_in_failed_jsonl_and_left_out(
    encoder: ImageEncoder, demo_root: Path, tmp_path: Path
) -> None:
    good, bad = _corrupt_inputs(demo_root, tmp_path / "images")
    summary = _extract(encoder, tmp_path / "images", tmp_path / "store")
    assert summary["count"] == len(good) == 48 and summary["failed"] == 2
    store = open_store(tmp_path / "store")
    assert store.ids().tolist() == good
    failed = [json.loads(line) for line in (tmp_path / "store" / FAILED_FILE).read_text().splitlines()]
    ids = read_input(tmp_path / "images").ids
    assert [f["id"] for f in failed] == bad
    assert [f["row"] for f in failed] == [ids.index(b) for b in bad]
    assert all(Path(f["path"]).is_file() and f["error"] for f in failed)
    assert "truncated" in failed[0]["error"] and "UnidentifiedImageError" in failed[1]["error"]
    paths = [str(tmp_path / "images" / i) for i in good]
    np.testing.assert_allclose(store.embeddings(), encoder.encode_images(paths), atol=1e-5)


def test_a_failure_rate_above_the_limit_aborts(encoder: ImageEncoder, demo_root: Path, tmp_path: Path) -> None:
    _corrupt_inputs(demo_root, tmp_path / "images")
    with pytest.raises(RuntimeError, match=r"2 of 50 inputs failed.*max_failure_rate=0\.01"):
        _extract(encoder, tmp_path / "images", tmp_path / "store", max_failure_rate=0.01)
    assert not (tmp_path / "store" / "manifest.json").exists()
    summary = _extract(encoder, tmp_path / "images", tmp_path / "store", max_failure_rate=0.05)
    assert summary["failed"] == 2 and open_store(tmp_path / "store").count == 48


class _Decodes:
    """Records every file the extraction decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        self.load = encoders.image.load_rgb
        monkeypatch.setattr(encoders.image, "load_rgb", self)

    def __call__(self, path: str, *args):
        self.paths.append(path)
        return self.load(path, *args)


def test_an_interrupted_run_resumes_and_skips_finished_shards(
    reference: Path, encoder: ImageEncoder, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    npy, parquet = shard_name(2)
    (store / npy).unlink()
    (store / parquet).unlink()
    (store / "manifest.json").unlink()
    kept = {name: os.stat(store / name).st_mtime_ns for i in (0, 1) for name in shard_name(i)}
    decodes = _Decodes(monkeypatch)
    _extract(encoder, demo_root / "train", store)
    assert {name: os.stat(store / name).st_mtime_ns for name in kept} == kept
    source = read_input(demo_root / "train")
    assert decodes.paths == source.paths[2 * SHARD_SIZE:]  # only the missing shard's images were decoded
    _assert_same_store(store, reference)


class _Crash(pl.Callback):
    """Stops a run at a given batch, before that batch is written, as a killed job would."""

    def __init__(self, at_batch: int) -> None:
        self.at_batch = at_batch

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.at_batch:
            raise RuntimeError("simulated crash")


def test_a_crash_mid_shard_resumes_from_the_written_batches(
    reference: Path, encoder: ImageEncoder, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(encoder, demo_root / "train", store, trainer=_trainer(callbacks=[_Crash(at_batch=5)]))
    # batches 0-4 (30 rows) were written: shard 0 complete, 10 rows of shard 1 in part files
    assert (store / shard_name(0)[0]).is_file() and not (store / shard_name(1)[0]).exists()
    decodes = _Decodes(monkeypatch)
    _extract(encoder, demo_root / "train", store)
    assert decodes.paths == read_input(demo_root / "train").paths[30:]
    assert not (store / extraction.RUN_DIR / "parts").exists()
    _assert_same_store(store, reference)


def test_other_settings_on_an_existing_store_are_refused(
    reference: Path, encoder: ImageEncoder, demo_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    with pytest.raises(ValueError, match=r"other settings \(normalize: True -> False\).*overwrite=true"):
        _extract(encoder, demo_root / "train", store, normalize=False)
    summary = _extract(encoder, demo_root / "train", store, normalize=False, overwrite=True)
    assert summary["count"] == 48 and not open_store(store).normalized
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(reference / shard_name(0)[0], plain)
    with pytest.raises(ValueError, match="not written by a resumable extraction"):
        _extract(encoder, demo_root / "train", plain)


def test_a_tampered_store_is_refused(reference: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    npy = store / shard_name(1)[0]
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"embeddings-00001\.npy.*altered"):
        open_store(store)


@pytest.mark.slow
def test_two_processes_write_the_same_rows_in_input_order(
    reference: Path, published: Path, demo_root: Path, tmp_path: Path
) -> None:
    overrides = _overrides(published, demo_root / "train", tmp_path / "store", "batch_size=5", trainer="ddp_sim")
    summary = extract(compose_cfg("extract.yaml", overrides, tmp_path))
    assert summary["count"] == 48
    _assert_same_store(tmp_path / "store", reference)


@pytest.mark.slow
def test_console_script_from_another_directory(published: Path, demo_root: Path, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "mmpretrain-extract"),
        *_overrides(published, demo_root / "val", Path("store")),
        "labels=false",
    ]
    env = {**os.environ, "MMPRETRAIN_ROOT": str(tmp_path)}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    store = open_store(tmp_path / "store")
    assert store.count == 16 and "label" not in store.metadata().column_names
    assert list((tmp_path / "logs" / "extract" / "runs").glob("*/extract.log"))
    assert result.stderr.rstrip().endswith(f"mmpretrain-extract: outputs:\n  {tmp_path / 'store'}")


def test_store_records_the_absolute_encoder_path(encoder: ImageEncoder, published: Path, demo_root: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(published.parent)
    _extract(encoder, demo_root / "val", tmp_path / "store", encoder_source=published.name)
    source = open_store(tmp_path / "store").manifest["extra"]["encoder_source"]
    assert source == str(published.resolve()), "a store searched from another folder still finds its encoder"
    _extract(encoder, demo_root / "val", tmp_path / "named", encoder_source="moby_swin_t_300ep")
    assert open_store(tmp_path / "named").manifest["extra"]["encoder_source"] == "moby_swin_t_300ep"


class _SecondRun(pl.Callback):
    """Starts a second extraction into the same store while the first one is at a given batch."""

    def __init__(self, start) -> None:
        self.start = start
        self.raised: list[BaseException] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 1 and not self.raised:
            with pytest.raises(extraction.ExtractionError) as refused:
                self.start()
            self.raised.append(refused.value)


def test_a_second_run_into_the_same_store_is_refused(
    reference: Path, encoder: ImageEncoder, demo_root: Path, tmp_path: Path
) -> None:
    second = _SecondRun(lambda: _extract(encoder, demo_root / "train", tmp_path / "store"))
    _extract(encoder, demo_root / "train", tmp_path / "store", trainer=_trainer(callbacks=[second]))
    assert len(second.raised) == 1 and "is being written by another extraction" in str(second.raised[0])
    _assert_same_store(tmp_path / "store", reference)


def test_a_rewritten_input_file_redoes_its_shard_only(
    reference: Path, encoder: ImageEncoder, demo_root: Path, tmp_path: Path
) -> None:
    """Same ids, new pixels: the shard holding the rewritten file is extracted again, the others are kept."""
    shutil.copytree(demo_root / "train", tmp_path / "images")  # copy2 keeps sizes and mtimes: the same inputs
    store = tmp_path / "store"
    shutil.copytree(reference, store)
    kept = {name: os.stat(store / name).st_mtime_ns for name in shard_name(0)}
    ids = read_input(tmp_path / "images").ids
    rewritten = tmp_path / "images" / ids[SHARD_SIZE + 3]  # in shard 1
    rewritten.write_bytes((tmp_path / "images" / ids[0]).read_bytes())
    _extract(encoder, tmp_path / "images", store)
    assert {name: os.stat(store / name).st_mtime_ns for name in kept} == kept
    _extract(encoder, tmp_path / "images", tmp_path / "fresh")
    _assert_same_store(store, tmp_path / "fresh")
    assert not np.allclose(open_store(store).embeddings(), open_store(reference).embeddings(), atol=1e-5)
