"""Extraction from WebDataset shards loses nothing silently: one run at a time, no resume across changed weights or
inputs, unread shards stay pending or fail the run naming them, and an unstorable key fails only its own row."""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import pytorch_lightning as pl
import test_extract
import torch
from PIL import Image

from mmpretrain.embeddings import StoreError, open_store
from mmpretrain.encoders import ImageEncoder, load_encoder
from mmpretrain.extraction import FAILED_FILE, run_shard_extraction

PER_SHARD = 8
published, encoder = test_extract.published, test_extract.encoder  # the tiny published encoder's fixtures


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value * 7 % 256, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path: Path, keys: list[str]) -> bytes:
    """A shard of one PNG per key, written with tarfile so any name (line breaks, stray bytes) can be a key."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for i, key in enumerate(keys):
            data = _png(i + len(key))
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _shards(folder: Path, count: int = 3, index: bool = True) -> list[str]:
    """``count`` shards of PER_SHARD samples, keys ``s<shard>_<i>``, with a shards.json giving their counts."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(count):
        _tar(folder / f"part-{s:06d}.tar", [f"s{s}_{i}" for i in range(PER_SHARD)])
        urls.append(str(folder / f"part-{s:06d}.tar"))
    if index:
        counts = {Path(u).name: PER_SHARD for u in urls}
        (folder / "shards.json").write_text(json.dumps({"counts": counts}))
    return urls


def _keys(count: int = 3) -> list[str]:
    return [f"s{s}_{i}" for s in range(count) for i in range(PER_SHARD)]


def _trainer(*callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks))


def _run(encoder: ImageEncoder, urls: list[str] | str, output: Path, *callbacks: pl.Callback, **kwargs):
    kwargs = {"batch_size": 3, "num_workers": 0, **kwargs}
    return run_shard_extraction(encoder, urls, output, _trainer(*callbacks), **kwargs)


class _AtBatch(pl.Callback):
    """Calls ``action`` once, after batch ``at`` was predicted and before it is written."""

    def __init__(self, at: int, action) -> None:
        self.at, self.action, self.done = at, action, False

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.at and not self.done:
            self.done = True
            self.action()


def _crash() -> None:
    raise RuntimeError("simulated crash")


def test_a_second_run_into_the_same_output_is_refused(encoder: ImageEncoder, tmp_path: Path) -> None:
    """A requeued job whose first copy still runs: the copy is refused, the first run writes every row."""
    urls = _shards(tmp_path / "in")
    second: list[BaseException] = []

    def start_second() -> None:
        try:
            _run(encoder, urls, tmp_path / "out")
        except Exception as err:  # what the second run raised is the test's subject
            second.append(err)

    summary = _run(encoder, urls, tmp_path / "out", _AtBatch(1, start_second))
    assert len(second) == 1 and "is being written by another extraction" in str(second[0])
    assert summary["count"] == 3 * PER_SHARD and summary["failed"] == 0
    assert open_store(tmp_path / "out").ids().tolist() == _keys()


def test_lost_part_files_fail_the_run_instead_of_a_short_shard(encoder: ImageEncoder, tmp_path: Path) -> None:
    """The merge checks that rows 0..last are all there: parts another process deleted are never papered over."""
    urls = _shards(tmp_path / "in")
    out = tmp_path / "out"

    def lose_parts() -> None:
        for part in (out / ".extract").rglob("*.npz"):
            part.unlink()

    with pytest.raises(RuntimeError, match=r"hold 5 of the 8 rows read from .*part-000000\.tar"):
        _run(encoder, urls, out, _AtBatch(1, lose_parts))
    assert not (out / "embeddings-00000.npy").exists() and not (out / "manifest.json").exists()
    assert _run(encoder, urls, out)["count"] == 3 * PER_SHARD  # a rerun reads the shard again


def test_resume_with_changed_weights_is_refused(published: Path, tmp_path: Path) -> None:
    """Weights overwritten under the same name between a crash and its rerun: one store never mixes two models."""
    urls = _shards(tmp_path / "in")
    first = load_encoder(published, device="cpu")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(first, urls, tmp_path / "out", _AtBatch(4, _crash))
    assert (tmp_path / "out/embeddings-00000.npy").is_file()
    changed = load_encoder(published, device="cpu")
    with torch.no_grad():
        next(changed.backbone.parameters()).add_(0.5)
    with pytest.raises(StoreError, match=r"other settings \(weights_sha256: .*cannot be resumed"):
        _run(changed, urls, tmp_path / "out")
    assert _run(changed, urls, tmp_path / "out", overwrite=True)["count"] == 3 * PER_SHARD


def test_a_changed_input_shard_is_extracted_again(encoder: ImageEncoder, tmp_path: Path) -> None:
    urls = _shards(tmp_path / "in")
    _run(encoder, urls, tmp_path / "out")
    kept = (tmp_path / "out/embeddings-00001.npy").stat().st_mtime_ns
    _tar(Path(urls[0]), ["new_a", "new_b"])  # rewritten in place: another size, another mtime
    (Path(urls[0]).parent / "shards.json").write_text(json.dumps({"counts": {"part-000000.tar": 2,
                                                                             "part-000001.tar": PER_SHARD,
                                                                             "part-000002.tar": PER_SHARD}}))
    summary = _run(encoder, urls, tmp_path / "out")
    store = open_store(tmp_path / "out")
    assert summary["count"] == 2 + 2 * PER_SHARD
    assert store.ids().tolist() == ["new_a", "new_b", *_keys()[PER_SHARD:]]
    assert (tmp_path / "out/embeddings-00001.npy").stat().st_mtime_ns == kept  # unchanged shards are kept
    fresh = _run(encoder, urls, tmp_path / "fresh")
    assert fresh["count"] == summary["count"]
    np.testing.assert_allclose(store.embeddings(), open_store(tmp_path / "fresh").embeddings(), atol=1e-6)


class _Shards(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    missing: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        name = self.path.lstrip("/")
        if name not in self.files or name in self.missing:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.files[name])))
        self.send_header("ETag", f'"{hash(self.files[name])}"')
        self.end_headers()
        if body:
            self.wfile.write(self.files[name])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, type[_Shards]]]:
    handler = type("Handler", (_Shards,), {"files": {}, "missing": set()})
    for url in _shards(tmp_path / "served"):
        handler.files[Path(url).name] = Path(url).read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


def test_an_http_404_shard_fails_the_run_and_is_retried(encoder: ImageEncoder, server, tmp_path: Path) -> None:
    """A shard the server refuses is never a finished empty store shard: the run fails naming it, a rerun reads it."""
    base, handler = server
    urls = [f"{base}/part-{s:06d}.tar" for s in range(3)]
    handler.missing.add("part-000001.tar")
    with pytest.raises(RuntimeError, match=r"could not be read to their end.*part-000001\.tar"):
        _run(encoder, urls, tmp_path / "out")
    assert not (tmp_path / "out/manifest.json").exists()
    failed = [json.loads(line) for line in (tmp_path / "out" / FAILED_FILE).read_text().splitlines()]
    assert [(f["path"], f["read"], f["missing"]) for f in failed] == [(urls[1], 0, None)]
    handler.missing.clear()  # the server is back
    summary = _run(encoder, urls, tmp_path / "out")
    assert summary["count"] == 3 * PER_SHARD and summary["failed"] == 0
    assert open_store(tmp_path / "out").ids().tolist() == _keys()


def test_a_failing_pipe_fails_the_run_and_is_retried(encoder: ImageEncoder, tmp_path: Path) -> None:
    urls = _shards(tmp_path / "in", count=2)
    later = tmp_path / "later.tar"
    spec = [*urls, f"pipe:cat {later}"]
    with pytest.raises(RuntimeError, match=r"could not be read to their end.*pipe:cat .*later\.tar"):
        _run(encoder, spec, tmp_path / "out")
    _tar(later, ["late_0", "late_1"])
    summary = _run(encoder, spec, tmp_path / "out")
    assert summary["count"] == 2 * PER_SHARD + 2
    assert open_store(tmp_path / "out").ids().tolist()[-2:] == ["late_0", "late_1"]


def test_a_truncated_shard_counts_its_lost_samples_and_is_read_again(encoder: ImageEncoder, tmp_path: Path) -> None:
    """shards.json says 8 samples; the cut shard gives 3: 5 lost, more than the allowed rate, so the run fails;
    allowed, the store keeps the 3 and the next run, after the shard is repaired, reads it whole."""
    urls = _shards(tmp_path / "in")
    whole = Path(urls[2]).read_bytes()
    with tarfile.open(urls[2]) as tar:
        cut = tar.getmembers()[3].offset + 700  # inside the 4th sample's data
    Path(urls[2]).write_bytes(whole[:cut])
    with pytest.raises(RuntimeError, match=r"5 of 24 samples failed.*max_failure_rate=0\.1"):
        _run(encoder, urls, tmp_path / "out")
    summary = _run(encoder, urls, tmp_path / "out", max_failure_rate=0.3)
    assert summary["count"] == 2 * PER_SHARD + 3 and summary["failed"] == 5
    failed = [json.loads(line) for line in (tmp_path / "out" / FAILED_FILE).read_text().splitlines()]
    assert [(f["path"], f["read"], f["missing"]) for f in failed] == [(urls[2], 3, 5)]
    assert "truncated_shard" in failed[0]["error"]
    Path(urls[2]).write_bytes(whole)
    summary = _run(encoder, urls, tmp_path / "out", max_failure_rate=0.3)
    assert summary["count"] == 3 * PER_SHARD and summary["failed"] == 0
    assert open_store(tmp_path / "out").ids().tolist() == _keys()


def test_an_unstorable_key_fails_only_its_row(encoder: ImageEncoder, tmp_path: Path) -> None:
    """A key with a line break or bytes that are not UTF-8 is a failed row with a printable repr; the rest is kept."""
    (tmp_path / "in").mkdir()
    keys = ["good_0", "line\nbreak", "good_1", "bad\udcffutf8", "good_2"]
    _tar(tmp_path / "in/odd-000000.tar", keys)
    summary = _run(encoder, str(tmp_path / "in/odd-000000.tar"), tmp_path / "out", max_failure_rate=0.5)
    assert summary["count"] == 3 and summary["failed"] == 2
    assert open_store(tmp_path / "out").ids().tolist() == ["good_0", "good_1", "good_2"]
    lines = (tmp_path / "out" / FAILED_FILE).read_text(encoding="utf-8").splitlines()
    failed = [json.loads(line) for line in lines]
    assert [f["id"] for f in failed] == [repr("line\nbreak"), repr("bad\udcffutf8")]
    assert all(f["id"].isprintable() and "unstorable_key" in f["error"] for f in failed)


def test_the_command_exits_1_naming_the_shard_that_lost_data(published: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """What a user who reads only the exit status sees: not 0, and one line naming the shard."""
    from mmpretrain.cli.extract import main

    urls = _shards(tmp_path / "in", count=1)
    monkeypatch.setenv("MMPRETRAIN_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = f"[{urls[0]},'pipe:cat {tmp_path / 'absent.tar'}']"
    with pytest.raises(SystemExit) as exited:
        main([f"encoder={published}", f"input={spec}", f"output={tmp_path / 'out'}", "trainer=cpu", "num_workers=0",
              "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    assert exited.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mmpretrain-extract: error: 1 input shards could not be read to their end")
    assert f"pipe:cat {tmp_path / 'absent.tar'}" in last
