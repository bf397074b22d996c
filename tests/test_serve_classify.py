"""/v1/classify: the few-shot classifier folder of ``mmpretrain-fewshot fit`` over HTTP, equal to
``mmpretrain.fewshot.load_classifier(dir).predict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from test_serve import ckpt as ckpt
from test_serve import one_line_error, running_server

import mmpretrain.fewshot


def test_classify_over_http_equals_the_loaded_classifier(ckpt: Path, demo_root: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "clf"
    fit = subprocess.run([str(Path(sys.executable).parent / "mmpretrain-fewshot"), "fit",
                          f"support={demo_root / 'train'}", f"encoder={ckpt}", f"output={out}"],
                         capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr
    queries = sorted((demo_root / "val").rglob("*.png"))[:5]
    predictions = mmpretrain.fewshot.load_classifier(out).predict([str(q) for q in queries])
    expected = predictions.records([q.name for q in queries], [str(q) for q in queries], k=3)
    with running_server(f"encoder={ckpt}", f"classifier={out}") as server:
        response = requests.post(server.url + "/v1/classify", files=[("images", q.read_bytes()) for q in queries],
                                 data={"top_k": "3"}, timeout=120)
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [g["predicted"] for g in got] == [e["predicted"] for e in expected]
        for g, e in zip(got, expected):
            assert [x["label"] for x in g["labels"]] == [x["label"] for x in e["labels"]]
            assert [x["p"] for x in g["labels"]] == pytest.approx([x["p"] for x in e["labels"]], abs=1e-5)
        one_line_error(requests.post(server.url + "/v1/classify", files=[("images", b"junk")], timeout=60), 400,
                       "undecodable_image")
        one_line_error(requests.post(server.url + "/v1/classify", json={"images": []}, timeout=60), 400,
                       "empty_batch")
