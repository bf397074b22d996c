"""``mmpretrain-shards``: unique keys that the reader gets back as ``shards.json`` records them, writes that leave
the folder as it was when interrupted, no silent overwrite, and a printed pattern that pastes into a shell."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from mmpretrain.data.shards import INDEX_FILE, expand_shards, read_shard, shard_counts, write_shards
from mmpretrain.errors import DataError, PathExistsError, WriteError
from mmpretrain.make_shards import main


def _images(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(path, format="PNG")


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("a", "b"), [("a.jpg", "a.png"), ("a.b.png", "a_b.png"), ("a/b.png", "a__b.png")])
def test_files_that_would_share_a_key_are_refused_naming_both(tmp_path: Path, capsys, a: str, b: str) -> None:
    _images(tmp_path / "src", ["c.png", a, b])
    code, _, err = _run(capsys, tmp_path / "src", tmp_path / "out")
    assert code == 1 and f"'{a}' and '{b}' would both be sample key" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_name_with_a_line_break_or_invalid_utf8_is_refused(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "nl", ["ok.png", "two\nlines.png"])
    code, _, err = _run(capsys, tmp_path / "nl", tmp_path / "out")
    assert code == 1 and "'two\\nlines.png' holds a line break" in err
    src = tmp_path / "bytes"
    _images(src, ["ok.png"])
    os.rename(src / "ok.png", os.fsencode(src) + b"/bad\xff.png")
    code, _, err = _run(capsys, src, tmp_path / "out")
    assert code == 1 and "is not valid UTF-8" in err and "bad\\udcff.png" in err


def test_what_shards_json_records_is_what_the_reader_gets(tmp_path: Path, capsys) -> None:
    names = [f"d{i % 3}/x.{i}.png" for i in range(7)] + ["top.png"]
    _images(tmp_path / "src", names)
    code, out, _ = _run(capsys, tmp_path / "src", tmp_path / "out", "--maxcount", "3")
    assert code == 0 and "wrote 3 shards" in out
    urls = expand_shards(str(tmp_path / "out/shard-{000000..000002}.tar"))
    recorded = json.loads((tmp_path / "out" / INDEX_FILE).read_text())["counts"]
    read = {Path(u).name: sum(1 for _ in read_shard(u)) for u in urls}
    assert recorded == read and sum(read.values()) == 8
    keys = [s["__key__"] for u in urls for s in read_shard(u, shard_counts([u])[0])]
    assert len(set(keys)) == 8 and "d1__x_4" in keys


def test_a_folder_with_shards_of_the_prefix_is_refused_unless_overwrite(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "big", [f"{i}.png" for i in range(5)])
    _images(tmp_path / "small", ["a.png", "b.png"])
    assert _run(capsys, tmp_path / "big", tmp_path / "out", "--maxcount", "2")[0] == 0
    assert _run(capsys, tmp_path / "big", tmp_path / "out", "--prefix", "val")[0] == 0  # another prefix: fine
    code, _, err = _run(capsys, tmp_path / "small", tmp_path / "out")
    assert code == 1 and "already holds shards shard-*.tar" in err and "--overwrite" in err
    assert _run(capsys, tmp_path / "small", tmp_path / "out", "--overwrite")[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["shard-000000.tar", "val-000000.tar"]
    assert json.loads((tmp_path / "out" / INDEX_FILE).read_text())["counts"] == {"shard-000000.tar": 2,
                                                                               "val-000000.tar": 5}
    with pytest.raises(PathExistsError):
        write_shards(iter([{"__key__": "z", "txt": "x"}]), tmp_path / "out", prefix="val")


def test_a_full_disk_leaves_the_earlier_shards_and_index_untouched(tmp_path: Path) -> None:
    samples = [{"__key__": f"k{i}", "txt": "x" * 100} for i in range(6)]
    write_shards(iter(samples), tmp_path, maxcount=3)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = tarfile.TarFile.addfile
    calls = []

    def full(self, info, fileobj=None):
        calls.append(info.name)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, info, fileobj)

    with mock.patch.object(tarfile.TarFile, "addfile", full), pytest.raises(WriteError) as info:
        write_shards(iter(samples), tmp_path, maxcount=3, overwrite=True)
    assert "No space left on device" in str(info.value) and str(tmp_path) in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary, nothing replaced


def test_repeated_or_dotted_keys_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="two samples have the key 'a'"):
        write_shards(iter([{"__key__": "a", "txt": "1"}, {"__key__": "a", "txt": "2"}]), tmp_path / "x")
    with pytest.raises(DataError, match=r"'a\.b' holds a dot"):
        write_shards(iter([{"__key__": "a.b", "txt": "1"}]), tmp_path / "y")
    assert not list((tmp_path / "x").iterdir()) and not list((tmp_path / "y").iterdir())


def test_the_printed_pattern_pastes_into_a_shell_and_hydra(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "my images", [f"{i}.png" for i in range(5)])
    out = tmp_path / "sh,ards'q"  # a comma and a quote (a space would split the shard list)
    code, printed, _ = _run(capsys, tmp_path / "my images", out, "--maxcount", "2")
    assert code == 0
    lines = [line.split(" ... ", 1)[1] for line in printed.splitlines() if " ... " in line]
    assert len(lines) == 2
    parser = OverridesParser.create()
    for line, key in zip(lines, ("data.shards", "input")):
        words = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert len(words) == 1
        (override,) = parser.parse_overrides([words[0]])
        assert override.key_or_group == key
        assert expand_shards(override.value()) == [str(out / f"shard-{i:06d}.tar") for i in range(3)]


def test_installed_as_a_console_script_and_a_module(tmp_path: Path) -> None:
    _images(tmp_path / "src", ["a.png"])
    script = Path(sys.executable).with_name("mmpretrain-shards")
    assert script.is_file()
    done = subprocess.run([sys.executable, "-m", "mmpretrain.make_shards", str(tmp_path / "src"), str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "'data.shards=\"" in done.stdout
    help_text = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--overwrite" in help_text.stdout
