"""/v1/classify: the few-shot classifier folder's predictions over HTTP.

The folder is written by ``mmpretrain-fewshot fit`` and read by ``mmpretrain.fewshot.load_classifier``; where this
installation lacks them, the end-to-end test skips saying so, and the service refuses ``classifier=`` in one line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from test_serve import ckpt as ckpt
from test_serve import one_line_error, running_server, serve_command

import mmpretrain.fewshot
from mmpretrain.errors import ConfigError
from mmpretrain.serve.classify import Classifier, as_prediction

HAS_LOADER = hasattr(mmpretrain.fewshot, "load_classifier")


def test_prediction_records_read_as_mappings_objects_or_pairs() -> None:
    record = {"predicted": "unknown", "labels": [{"label": "b", "p": 0.2}, {"label": "a", "p": 0.7}, ("c", 0.1)]}
    assert as_prediction(record, 2) == {"predicted": "unknown",
                                        "labels": [{"label": "a", "p": 0.7}, {"label": "b", "p": 0.2}]}
    obj = SimpleNamespace(predicted="a", labels=[SimpleNamespace(label="a", p=0.9)])
    assert as_prediction(obj, 5) == {"predicted": "a", "labels": [{"label": "a", "p": 0.9}]}


@pytest.mark.skipif(HAS_LOADER, reason="mmpretrain.fewshot.load_classifier exists here")
def test_classifier_without_a_loader_is_refused_naming_the_key(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"classifier=.*load_classifier"):
        Classifier(str(tmp_path))
    done = subprocess.run([*serve_command(), f"encoder={ckpt}", f"classifier={tmp_path}"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1 and "mmpretrain-serve: error: classifier=" in done.stderr


@pytest.mark.skipif(not HAS_LOADER, reason="needs mmpretrain.fewshot.load_classifier (the few-shot classifier "
                                           "folders of mmpretrain-fewshot fit), not in this installation yet")
def test_classify_over_http_equals_the_loaded_classifier(ckpt: Path, demo_root: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "clf"
    fit = subprocess.run(["mmpretrain-fewshot", "fit", f"support={demo_root / 'train'}", f"encoder={ckpt}",
                          f"output={out}"], capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr
    queries = sorted((demo_root / "val").rglob("*.png"))[:5]
    expected = [as_prediction(r, 3) for r in mmpretrain.fewshot.load_classifier(out).predict(
        [str(q) for q in queries])]
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
