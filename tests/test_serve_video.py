"""mmpretrain-serve with a video-text encoder: texts and a video file embed as encode_texts / encode_videos do, and
a store of videos is searched by text."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from test_serve import Server, one_line_error, png_bytes, running_server

from mmpretrain import load_encoder
from mmpretrain.embeddings import write_store
from mmpretrain.retrieval import build_index
from mmpretrain.video import read_video_manifest


@pytest.fixture(scope="module")
def videos(video_demo: dict[str, Path]) -> list:
    return read_video_manifest(video_demo["val"])


@pytest.fixture(scope="module")
def video_encoder(video_pretrained: Path):
    return load_encoder(video_pretrained, device="cpu")


@pytest.fixture(scope="module")
def video_store(video_encoder, videos: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = video_encoder.encode_videos([r.video for r in videos])
    root = tmp_path_factory.mktemp("serve_video_store") / "store"
    write_store(root, rows, {"id": [r.id for r in videos], "path": [str(r.video) for r in videos],
                             "label": [r.label for r in videos]}, video_encoder.name, normalized=True)
    return root


@pytest.fixture(scope="module")
def server(video_pretrained: Path, video_store: Path) -> Iterator[Server]:
    with running_server(f"encoder={video_pretrained}", f"index={video_store}") as running:
        yield running


def test_texts_and_a_video_embed_as_the_python_api(server: Server, video_encoder, videos: list) -> None:
    texts = ["a red circle", "a blue square moving left"]
    response = requests.post(server.url + "/v1/embed", json={"texts": texts}, timeout=60)
    assert response.status_code == 200 and response.json()["kind"] == "text"
    np.testing.assert_allclose(response.json()["embeddings"], video_encoder.encode_texts(texts), atol=1e-5)

    path = Path(videos[0].video)
    response = requests.post(server.url + "/v1/embed", files={"video": (path.name, path.read_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["embeddings"], video_encoder.encode_videos([path]), atol=1e-5)
    response = requests.post(server.url + "/v1/embed", json={"video": base64.b64encode(path.read_bytes()).decode()},
                             timeout=60)
    np.testing.assert_allclose(response.json()["embeddings"], video_encoder.encode_videos([path]), atol=1e-5)


def test_text_search_of_a_video_store(server: Server, video_encoder, videos: list) -> None:
    query = "a green triangle"
    rows = video_encoder.encode_videos([r.video for r in videos])
    scores, ids = build_index(rows, ids=[r.id for r in videos], index_key="Flat", target_recall=None,
                              progress=False).search(video_encoder.encode_texts([query]), 4)
    response = requests.post(server.url + "/v1/search", json={"text": query, "k": 4}, timeout=60)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == list(ids[0])
    np.testing.assert_allclose([h["score"] for h in hits], scores[0], atol=1e-5)
    by_id = {r.id: r for r in videos}
    assert all(h["label"] == by_id[h["id"]].label and h["path"] == str(by_id[h["id"]].video) for h in hits)
    thumb = requests.get(server.url + "/v1/thumbnail", params={"id": hits[0]["id"]}, timeout=60)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_bad_video_service_inputs(server: Server) -> None:
    url = server.url
    long_text = " ".join(["circle"] * 300)
    one_line_error(requests.post(url + "/v1/embed", json={"texts": ["ok", long_text]}, timeout=60), 400,
                   "text_too_long", "texts[1] is ")
    one_line_error(requests.post(url + "/v1/search", json={"text": long_text}, timeout=60), 400, "text_too_long")
    one_line_error(requests.post(url + "/v1/embed", json={"texts": ["  "]}, timeout=60), 400, "empty_text")
    one_line_error(requests.post(url + "/v1/embed", json={"texts": "not a list"}, timeout=60), 400, "bad_texts")
    one_line_error(requests.post(url + "/v1/embed", files={"video": ("v.mp4", b"\x00\x01 not a video" * 50)},
                                 timeout=60), 400, "undecodable_video", "video:")
    one_line_error(requests.post(url + "/v1/embed", files={"video": ("v.mp4", b"")}, timeout=60), 400, "empty_video")
    one_line_error(requests.post(url + "/v1/embed", files=[("images", png_bytes())], timeout=60), 400,
                   "no_image_encoder", "video-text model")
    assert requests.get(url + "/health", timeout=60).json()["kind"] == "video"
