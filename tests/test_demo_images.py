"""The demo's image half: the Omniglot split it tells its story on, and the story itself at a tiny scale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmpretrain.data.demo import omniglot_demo
from mmpretrain.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_omniglot_demo_split(tmp_path: Path) -> None:
    split = omniglot_demo(tmp_path / "omniglot", tmp_path / "lists", characters=3, labelled=3, per_character=2)
    support = [line.split("\t") for line in _lines(split.support)]
    labelled = [line.split("\t") for line in _lines(split.labelled)]
    queries, unknown, others = _lines(split.queries), _lines(split.unknown), _lines(split.others)
    # one drawing per known character to fit on, three to estimate with, the other 17 to predict
    assert [label for _, label in support] == ["character01", "character02", "character03"]
    assert len(labelled) == 9 and all(row in labelled for row in support)
    assert len(queries) == 3 * 17 and not {p for p, _ in labelled} & set(queries)
    assert all(Path(p).parent.name == label for p, label in labelled)
    assert all("Japanese_(katakana)" in p for p in queries) and all("/Sanskrit/" in p for p in unknown)
    # pretraining: every drawing of 3 characters of 3 alphabets; the known and unknown alphabets take no part
    pretrain = _lines(split.pretrain)
    assert len(pretrain) == 3 * 3 * 20 and set(others) <= set(pretrain) and len(others) == 3 * 3 * 2
    assert not any("katakana" in p or "Sanskrit" in p for p in pretrain)
    assert len(unknown) == 3 * 2 and all(Path(p).is_file() for p in pretrain + queries + unknown)


def test_omniglot_demo_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Klingon: no such alphabet"):
        omniglot_demo(tmp_path / "omniglot", tmp_path / "lists", known="Klingon")
    with pytest.raises(DataError, match="labelled=20"):
        omniglot_demo(tmp_path / "omniglot", tmp_path / "lists", labelled=20)


@pytest.mark.slow
def test_demo_image_half_tells_the_story(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts/demo.py"), "--root", str(tmp_path), "--skip-videos",
                           "--characters", "3", "--steps", "4"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out, runs = done.stdout, tmp_path / "logs/demo/omniglot"
    for name in ("train/checkpoints/last.ckpt", "estimate/estimate.json", "estimate/estimate.png",
                 "classifier/classifier.json", "predictions.jsonl", "suggest/suggest.jsonl", "suggest/suggest.png",
                 "classifier.onnx", "classifier.onnx.json", "predictions.png"):
        assert (runs / name).is_file(), name
    # the table: each encoder's estimate with its interval beside the measured one-shot accuracy
    for encoder in ("raw pixels", "random init", "MoBY"):
        assert re.search(rf"^{encoder} +\d+\.\d \(\d+\.\d–\d+\.\d\) +\d+\.\d  (inside|outside)$", out, re.M), out
    assert re.search(r"Japanese_\(katakana\) drawings \(known characters\) called unknown: \d+ of 51", out), out
    assert re.search(r"Sanskrit drawings \(never fitted\) called unknown: \d+ of 15", out), out
    assert len(_lines(runs / "suggest/suggest.jsonl")) == 10 and re.search(r"^ +10\. Japanese", out, re.M)
    agree = re.search(r"onnxruntime gives the same prediction as predict for (\d+) of (\d+) drawings", out)
    assert agree and agree[1] == agree[2], out
    assert "[image half:" in out and "CPU-s]" in out
