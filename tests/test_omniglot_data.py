"""The vendored Omniglot drawings: unpacked to labelled folders, counted, idempotent, and refused when altered."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmpretrain.data.omniglot as omniglot
from mmpretrain.data import OMNIGLOT_ALPHABETS, labeled_folder, omniglot_folder
from mmpretrain.errors import DataError


def test_unpacks_five_alphabets_156_characters_20_drawings_each(tmp_path: Path) -> None:
    root = omniglot_folder(tmp_path / "omniglot")
    assert root == tmp_path / "omniglot"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(OMNIGLOT_ALPHABETS)
    drawings = 0
    for alphabet, characters in OMNIGLOT_ALPHABETS.items():
        source = labeled_folder(root / alphabet)  # one class per character
        assert len(source.classes) == characters
        assert np.bincount(source.labels).tolist() == [20] * characters
        drawings += len(source.paths)
    assert (sum(OMNIGLOT_ALPHABETS.values()), drawings) == (156, 3120)
    with Image.open(root / "Greek/character01/0394_01.png") as image:
        assert image.size == (105, 105) and image.mode == "1"  # black-on-white strokes

    stamp = (root / "Latin").stat().st_mtime_ns
    assert omniglot_folder(root) == root and (root / "Latin").stat().st_mtime_ns == stamp  # done: left as is
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_refuses_a_foreign_folder_and_an_altered_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"busy: exists and is not an unpacked Omniglot folder"):
        omniglot_folder(tmp_path / "busy")
    altered = tmp_path / "altered.zip"
    shutil.copy(omniglot.OMNIGLOT_ZIP, altered)
    with altered.open("r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    monkeypatch.setattr(omniglot, "OMNIGLOT_ZIP", altered)
    with pytest.raises(DataError, match=r"altered\.zip: sha256 [0-9a-f]{64} is not the vendored file's"):
        omniglot_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_ships_with_its_licence_and_citation_and_unpacks_from_the_command_line(tmp_path: Path) -> None:
    here = omniglot.OMNIGLOT_ZIP.parent
    assert "Copyright (c) 2015 Brenden Lake" in (here / "LICENSE").read_text()
    assert "Human-level concept learning" in (here / "CITATION.bib").read_text()
    run = subprocess.run([sys.executable, "-m", "mmpretrain.data.omniglot", str(tmp_path / "o")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "o") and (tmp_path / "o/Tagalog/character17").is_dir()
