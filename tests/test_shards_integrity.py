"""Shard reading that loses nothing silently: ``shards.json`` is validated and checked against what a pass reads,
an oversized member is refused from its tar header, a stalled ``http://`` shard ends within its deadline, and the
reader's error marker cannot be forged by a tar member."""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpretrain.data import ShardError, is_shard_error
from mmpretrain.data.shards import (
    INDEX_FILE,
    ShardDataset,
    expand_shards,
    read_shard,
    shard_counts,
    write_shards,
)
from mmpretrain.errors import ConfigError, DataError


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shard(folder: Path, n: int, prefix: str = "s") -> str:
    write_shards(iter({"__key__": f"k{i:03d}", "cls": str(i)} for i in range(n)), folder, prefix=prefix)
    return str(folder / f"{prefix}-000000.tar")


def _value(raw: dict) -> dict:
    return {"value": int(raw["cls"])}


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- shards.json


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"counts": {"s-000000.tar": "many"}}', "counts['s-000000.tar'] = 'many'"),
        ('{"counts": {"s-000000.tar": [1]}}', "counts['s-000000.tar'] = [1]"),
        ('{"counts": {"s-000000.tar": -3}}', "counts['s-000000.tar'] = -3"),
        ('{"counts": {"s-000000.tar": 1.5e400}}', "counts['s-000000.tar'] = inf"),
        ('{"counts": {"s-000000.tar": 1000000000000}}', "counts['s-000000.tar'] = 1000000000000"),
        ('{"counts": {"s-000000.tar": true}}', "counts['s-000000.tar'] = True"),
        ('{"counts": {"s-000000.tar": NaN}}', "not valid JSON"),
        ('{"counts": {"s-000000.tar": 3', "not valid JSON"),
        ('[["s-000000.tar", 3]]', "must be a JSON object"),
        ('{"counts": [3]}', "key 'counts' must map"),
        ('{"counts": {}, "classes": "cat"}', "key 'classes'"),
        ('{"s-000000.tar": "x"}', "counts['s-000000.tar'] = 'x'"),
    ],
)
def test_malformed_shards_json_names_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    url = _shard(tmp_path, 3)
    (tmp_path / INDEX_FILE).write_text(text)
    with pytest.raises(DataError) as info:
        shard_counts(expand_shards(url))
    assert str(tmp_path / INDEX_FILE) in str(info.value) and key in str(info.value)


def test_a_stale_count_fails_the_pass_naming_the_shard_and_both_numbers(tmp_path: Path) -> None:
    url = _shard(tmp_path, 40)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    index["counts"]["s-000000.tar"] = 2
    (tmp_path / INDEX_FILE).write_text(json.dumps(index))
    counts = shard_counts([url])
    assert counts == [2]
    dataset = ShardDataset([url], counts, _value, batch_size=1, train=False, pad=False)
    with pytest.raises(DataError, match=r"s-000000\.tar: more than 2 samples read, but shards\.json records 2"):
        list(dataset)
    fewer = ShardDataset([url], [50], _value, batch_size=1, train=False, pad=False)
    with pytest.raises(DataError, match=r"s-000000\.tar: 40 samples read, but shards\.json records 50"):
        list(fewer)


def test_count_check_warn_reads_every_sample_and_says_so(tmp_path: Path, monkeypatch, caplog) -> None:
    url = _shard(tmp_path, 40)
    monkeypatch.setenv("MMPRETRAIN_SHARD_COUNT_CHECK", "warn")
    dataset = ShardDataset([url], [2], _value, batch_size=1, train=False, pad=False)
    with caplog.at_level(logging.WARNING):
        values = [s["value"] for s in dataset]
    assert values == list(range(40))
    assert "more than 2 samples read, but shards.json records 2" in caplog.text
    monkeypatch.setenv("MMPRETRAIN_SHARD_COUNT_CHECK", "maybe")
    with pytest.raises(ConfigError, match="MMPRETRAIN_SHARD_COUNT_CHECK='maybe'"):
        list(read_shard(url))


# ---------------------------------------------------------------- members


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, produced as they are read (the test itself never holds the member)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_an_oversized_member_is_refused_from_its_header_without_reading_it(tmp_path: Path) -> None:
    """A .tar.gz under 1 MiB holding a 256 MiB member: counted as member_too_large, and skipping it costs a bounded
    few decompression buffers, not the member."""
    path = tmp_path / "bomb-000000.tar.gz"
    big = 256 << 20
    with gzip.open(path, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for name, data in (("a.png", _png(1)), ("a.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("b.bin")
        info.size = big
        tar.addfile(info, _Zeros(big))
        info = tarfile.TarInfo("c.cls")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"2"))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        samples = list(read_shard(str(path), max_member_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < big // 4, f"peak {peak} bytes while skipping a {big}-byte member"
    assert [s["__key__"] for s in samples if not is_shard_error(s)] == ["a", "c"]
    (error,) = [s for s in samples if is_shard_error(s)]
    assert error.reason == "member_too_large" and error.key == "b" and not error.ends_shard
    assert f"b.bin: {big} bytes, above the {1 << 20}-byte limit" in error.detail


def test_the_member_limit_comes_from_the_environment_and_is_counted(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m-000000.tar"
    _tar(path, [("a.cls", b"0"), ("b.cls", b"1" * 100), ("c.cls", b"2")])
    monkeypatch.setenv("MMPRETRAIN_SHARD_MAX_MEMBER_BYTES", "10")
    ds = ShardDataset([str(path)], [3], lambda raw: {"n": len(raw["cls"])}, batch_size=1, train=False, pad=False)
    samples = list(ds)
    assert [s["key"] for s in samples] == ["a", "c"]
    assert samples[1]["failed"] == 1 and samples[1]["failed_reasons"] == "member_too_large"


@pytest.mark.parametrize("member", ["k1.__error__", "k1.__key__", "k1.__url__"])
def test_a_member_named_like_the_readers_fields_is_a_corrupt_member(tmp_path: Path, member: str) -> None:
    path = tmp_path / "e-000000.tar"
    _tar(path, [("k0.cls", b"0"), ("k1.cls", b"1"), (member, b"truncated_shard"), ("k2.cls", b"2")])
    samples = list(read_shard(str(path), expected=3))
    assert [type(s) for s in samples] == [dict, ShardError, dict]
    assert samples[1].reason == "corrupt_member" and samples[1].key == "k1" and member in samples[1].detail
    assert all(s["__url__"] == str(path) for s in (samples[0], samples[2]))
    ds = ShardDataset([str(path)], [3], _value, batch_size=1, train=False, pad=False)
    out = list(ds)
    assert [s["value"] for s in out] == [0, 2] and out[1]["failed_reasons"] == "corrupt_member"


def test_two_samples_under_one_key_are_reported_not_merged(tmp_path: Path) -> None:
    """What an old make_shards wrote for a.jpg and a.png: the reader goes on past the duplicate."""
    path = tmp_path / "d-000000.tar"
    _tar(path, [("a.json", b"{}"), ("a.png", _png(1)), ("a.json", b"{}"), ("a.jpg", b"x"), ("b.cls", b"1")])
    samples = list(read_shard(str(path)))
    assert is_shard_error(samples[0]) and samples[0].reason == "corrupt_member" and "second .json" in samples[0].detail
    assert samples[1]["__key__"] == "b"


# ---------------------------------------------------------------- http


class _Dripping(BaseHTTPRequestHandler):
    """Headers announcing 1 MiB, then one byte every 0.5 s."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(120):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *args) -> None:
        pass


def test_a_stalled_http_shard_is_reported_as_truncated_within_its_deadline() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Dripping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/slow-000000.tar"
    result: list = []
    start = time.monotonic()
    reader = threading.Thread(target=lambda: result.extend(read_shard(url, stall_s=2)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    server.shutdown()
    server.server_close()
    assert not reader.is_alive(), "the reader is still blocked on a dripping server"
    assert time.monotonic() - start < 10
    (error,) = result
    assert error.reason == "truncated_shard" and error.url == url and error.ends_shard
    assert "curl exit 28" in error.detail and "MMPRETRAIN_SHARD_STALL_S" in error.detail
