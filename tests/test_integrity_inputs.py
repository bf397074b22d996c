"""Inputs: folder scans survive symlink cycles, non-regular files are refused, pixel caps hold before decoding, and
the restricted unpickler keeps one copy of each storage in memory."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_extract import _extract, encoder, published  # noqa: F401 - fixtures

from mmpretrain.data import load_rgb, scan_images
from mmpretrain.data.dataset import ImageReadError
from mmpretrain.encoders import ImageEncoder


def _in_thread(fn, timeout: float = 20.0):
    """Run ``fn`` in a thread and fail (instead of hanging the suite) when it does not finish in time."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except Exception as err:  # handed back to the test
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{fn} did not finish within {timeout} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_folder_scan_detects_symlink_cycles_and_self_links(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "one.png")
    Image.new("RGB", (4, 4)).save(root / "sub" / "two.png")
    (root / "self").symlink_to(root)
    (root / "sub" / "up").symlink_to(root)
    (root / "again").symlink_to(root / "sub")
    found = _in_thread(lambda: scan_images(root))
    assert sorted(Path(p).relative_to(root).as_posix() for p in found.paths) == ["one.png", "sub/two.png"]


def test_fifos_are_refused_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageReadError, match=r"x\.png: not a regular file"):
        _in_thread(lambda: load_rgb(str(fifo)))
    assert scan_images(_folder_with(tmp_path / "f", fifo)).paths == [str(tmp_path / "f" / "ok.png")]


def _folder_with(folder: Path, fifo: Path) -> Path:
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "ok.png")
    (folder / "fifo.png").symlink_to(fifo)
    return folder


def test_a_fifo_in_a_file_list_or_query_fails_that_input_only(encoder: ImageEncoder, demo_root: Path,  # noqa: F811
                                                               tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    images = sorted((demo_root / "train").rglob("*.png"))[:5]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in [*images, fifo]))
    summary = _in_thread(lambda: _extract(encoder, listing, tmp_path / "store", max_failure_rate=0.5), timeout=120)
    assert summary["count"] == 5 and summary["failed"] == 1
    assert "pipe.png" in (tmp_path / "store" / "failed.jsonl").read_text()
    with pytest.raises(ValueError, match=r"images\[1\].*pipe\.png.*not a regular file"):
        _in_thread(lambda: encoder.encode_images([images[0], fifo]))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width x height`` but holds almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_pixel_cap_is_checked_from_the_header(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 13000, 13000)
    with pytest.raises(ImageReadError, match=r"bomb\.png: 13000x13000 = 169000000 pixels is more than max_pixels"):
        load_rgb(str(bomb))
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(small)
    assert load_rgb(str(small), max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageReadError, match="max_pixels=1000"):
        load_rgb(str(small), max_pixels=1000)


class _Opaque:
    """Not on any allowlist: makes torch.load(weights_only=True) refuse, so the restricted unpickler runs."""


_PEAK = """
import sys
from pathlib import Path
from mmpretrain.hub.safe_load import _restricted_load

def peak():  # VmHWM belongs to this process image (getrusage's maxrss is inherited from the parent across exec)
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

before = peak()
obj = _restricted_load(Path(sys.argv[1]))
after = peak()
assert float(obj["w"][-1]) == 7.0
print(after - before)
"""


def test_restricted_unpickler_keeps_one_copy_of_each_storage(tmp_path: Path) -> None:
    size = 96 << 20
    weights = torch.zeros(size // 4)
    weights[-1] = 7.0
    path = tmp_path / "big.pth"
    torch.save({"w": weights, "cfg": _Opaque()}, path)
    del weights
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    growth = int(out.stdout.split()[-1])
    assert growth < 1.5 * size, f"peak grew by {growth / size:.2f}x the storage size"
