"""mmpretrain-serve over real HTTP: the server runs as its console script on a free loopback port.

Values equal the Python API, concurrent requests share forward passes, every bad input is a one-line 4xx, the token
and CORS guard the routes, /metrics counts it all, and SIGTERM lets an in-flight request finish.
"""

from __future__ import annotations

import base64
import contextlib
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from test_encoders import training_checkpoint

from mmpretrain import load_encoder
from mmpretrain.embeddings import write_store
from mmpretrain.retrieval import build_index

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Server:
    """A running `mmpretrain-serve` process, its base URL and the lines it wrote on stderr."""

    url: str
    process: subprocess.Popen
    log: list[str] = field(default_factory=list)


def serve_command() -> list[str]:
    """The installed console script beside this interpreter (what users run), else `python -m mmpretrain serve`."""
    script = Path(sys.executable).with_name("mmpretrain-serve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mmpretrain", "serve"]


@contextlib.contextmanager
def running_server(*args: str, timeout: float = 180.0) -> Iterator[Server]:
    """Start the server with `port=0` on 127.0.0.1, wait for its "listening on" line, stop it with SIGTERM after."""
    process = subprocess.Popen([*serve_command(), *args, "host=127.0.0.1", "port=0", "device=cpu"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for line in process.stderr:
            log.append(line.rstrip("\n"))
            if "listening on http://" in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    ready.wait(timeout)
    listening = [line for line in log if "listening on http://" in line]
    if not listening:
        process.kill()
        raise AssertionError("mmpretrain-serve did not start:\n" + "\n".join(log[-30:]))
    url = listening[0].split("listening on ", 1)[1].split()[0]
    try:
        yield Server(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def make_store(encoder, paths: list[Path], root: Path) -> Path:
    """A store of `paths` embedded with the Python API, ids `label/name`, with path and label metadata."""
    rows = encoder.encode_images(paths)
    ids = [f"{p.parent.name}/{p.stem}" for p in paths]
    write_store(root, rows, {"id": ids, "path": [str(p) for p in paths], "label": [p.parent.name for p in paths]},
                encoder.name, normalized=True)
    return root


def refusal(response: requests.Response) -> tuple[int, str, str]:
    """A refusal's status, kind and message, read from its one line of JSON."""
    one_line = response.text.count("\n") <= 1 and response.headers["content-type"].startswith("application/json")
    body = response.json() if one_line else {}
    kind = body.get("kind", f"not one line of JSON: {response.text[:200]!r}")
    return response.status_code, kind, body.get("error", "")


def one_line_error(response: requests.Response, status: int, kind: str, words: str = "") -> str:
    """Assert a refusal: the status, one line of JSON with the kind, and words its message must hold."""
    got_status, got_kind, message = refusal(response)
    assert (got_status, got_kind) == (status, kind), (got_status, got_kind, message)
    assert words.lower() in message.lower(), message
    return message


def png_bytes(size: tuple[int, int] = (40, 30), mode: str = "RGB", color: object = (200, 30, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
    return 0.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_checkpoint(tmp_path_factory.mktemp("serve_ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def encoder(ckpt: Path):
    return load_encoder(ckpt, device="cpu")


@pytest.fixture(scope="module")
def images(demo_root: Path) -> list[Path]:
    return sorted((demo_root / "train").rglob("*.png"))


@pytest.fixture(scope="module")
def store(encoder, images: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(encoder, images, tmp_path_factory.mktemp("serve_store") / "store")


@pytest.fixture(scope="module")
def server(ckpt: Path, store: Path) -> Iterator[Server]:
    """Image encoder and store, a token, CORS for one origin, small caps so bad inputs are cheap to make."""
    with running_server(f"encoder={ckpt}", f"index={store}", f"token={TOKEN}", "max_batch=8", "max_wait_ms=200",
                        "max_pixels=1000000", "max_body_mb=1", "read_timeout_s=1", "max_items=16",
                        "cors_origins=[http://allowed.test]") as running:
        yield running


def post(server: Server, route: str, **kwargs) -> requests.Response:
    return requests.post(server.url + route, headers={**AUTH, **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def test_embed_equals_encode_images_by_upload_and_base64(server: Server, encoder, images: list[Path]) -> None:
    chosen = images[:3]
    expected = encoder.encode_images(chosen)
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in chosen]
    response = post(server, "/v1/embed", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "image" and body["dim"] == encoder.embed_dim
    np.testing.assert_allclose(np.array(body["embeddings"], dtype=np.float32), expected, atol=1e-5)
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in chosen]
    b64[1] = "data:image/png;base64," + b64[1]
    response = post(server, "/v1/embed", json={"images": b64})
    np.testing.assert_allclose(np.array(response.json()["embeddings"], dtype=np.float32), expected, atol=1e-5)


def test_concurrent_requests_share_forward_passes(server: Server, encoder, images: list[Path]) -> None:
    before = requests.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    chosen = images[3:9]
    expected = encoder.encode_images(chosen)
    with ThreadPoolExecutor(len(chosen)) as pool:
        responses = list(pool.map(lambda p: post(server, "/v1/embed", files=[("images", p.read_bytes())]), chosen))
    rows = np.array([r.json()["embeddings"][0] for r in responses], dtype=np.float32)
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    after = requests.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    batches = metric(after, "mmpretrain_serve_batch_size_count") - metric(before, "mmpretrain_serve_batch_size_count")
    summed = metric(after, "mmpretrain_serve_batch_size_sum") - metric(before, "mmpretrain_serve_batch_size_sum")
    assert summed == len(chosen)
    assert batches < len(chosen), f"{len(chosen)} concurrent images ran in {batches} forward passes"


def test_search_by_image_and_vector_with_store_metadata(server: Server, encoder, store: Path,
                                                        images: list[Path]) -> None:
    query = images[5]
    response = post(server, "/v1/search", files={"image": query.read_bytes()}, data={"k": "3"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert len(hits) == 3 and hits[0]["id"] == f"{query.parent.name}/{query.stem}"
    assert hits[0]["path"] == str(query) and hits[0]["label"] == query.parent.name
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    vector = encoder.encode_images(images[7:8])[0]
    scores, ids = build_index(encoder.encode_images(images), ids=[f"{p.parent.name}/{p.stem}" for p in images],
                              index_key="Flat", target_recall=None, progress=False).search(vector[None], 5)
    response = post(server, "/v1/search", json={"vector": vector.tolist(), "k": 5})
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == list(ids[0])
    np.testing.assert_allclose([h["score"] for h in hits], scores[0], atol=1e-5)


def test_thumbnails_only_for_ids_of_the_store(server: Server, images: list[Path]) -> None:
    item = images[2]
    response = requests.get(server.url + "/v1/thumbnail", params={"id": f"{item.parent.name}/{item.stem}"},
                            headers=AUTH, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.size == Image.open(item).size  # 32 px images stay 32 px (thumbnails only shrink)
    for name in (str(item), "../../../etc/passwd", "/etc/passwd", "circle/../../x"):
        response = requests.get(server.url + "/v1/thumbnail", params={"id": name}, headers=AUTH, timeout=30)
        one_line_error(response, 404, "unknown_id", "not in the loaded store")


def truncated_png() -> bytes:
    """A noisy PNG cut in half: its header reads, its pixels do not."""
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy, "PNG")
    return noisy.getvalue()[: len(noisy.getvalue()) // 2]


@pytest.mark.parametrize(("files", "json_body", "status", "kind", "words"), [
    ([("images", b"\x00garbage bytes\xff" * 10)], None, 400, "undecodable_image", "images[0]: cannot decode"),
    ([("images", truncated_png())], None, 400, "undecodable_image", "images[0]"),
    ([("images", png_bytes((1100, 1000), "1", 0))], None, 413, "too_many_pixels", "max_pixels=1000000"),
    ([("images", b"")], None, 400, "empty_image", "empty file"),
    (None, {"images": []}, 400, "empty_batch", "images: the batch is empty"),
    (None, {"images": ["not base64 at all!"]}, 400, "bad_base64", "images[0]"),
    (None, {"images": [base64.b64encode(png_bytes()).decode()] * 17}, 413, "too_many_items", "at most 16"),
    (None, {"texts": ["a red circle"]}, 400, "no_text_encoder", "embeds images only"),
    (None, {"video": base64.b64encode(b"abc").decode()}, 400, "no_video_encoder", "embeds images only"),
    (None, {}, 400, "bad_query", "exactly one of images, texts or video"),
    ([("texts", "a text field")], None, 400, "no_text_encoder", "texts"),
    ([("images", (None, "not a file"))], None, 400, "not_a_file", "expected an uploaded file"),
])
def test_bad_embed_inputs_are_one_line_4xx(server: Server, files, json_body, status: int, kind: str,
                                           words: str) -> None:
    got_status, got_kind, message = refusal(post(server, "/v1/embed", files=files, json=json_body))
    assert (got_status, got_kind) == (status, kind), message
    assert words.lower() in message.lower()


def test_bad_requests_of_every_other_kind(server: Server) -> None:
    big = b"\x00" * (1024 * 1024 + 10)
    chunks = (b"\x00" * 65536 for _ in range(20))  # chunked: no Content-Length, refused while it streams
    cases = [
        (post(server, "/v1/embed", data=b"plain", headers={"Content-Type": "text/plain"}), 415,
         "unsupported_media_type", "text/plain"),
        (post(server, "/v1/embed", data=b"{not json", headers={"Content-Type": "application/json"}), 400,
         "bad_json", "not valid JSON"),
        (post(server, "/v1/embed", json=[1, 2]), 400, "bad_json", "JSON object"),
        (post(server, "/v1/nothing", json={}), 404, "unknown_route", "/v1/embed"),
        (requests.get(server.url + "/v1/embed", headers=AUTH, timeout=30), 405, "method_not_allowed", ""),
        (post(server, "/v1/embed", files=[("images", big)]), 413, "body_too_large", "max_body_mb"),
        (post(server, "/v1/embed", data=chunks, headers={"Content-Type": "application/json"}), 413,
         "body_too_large", "over the limit"),
        (post(server, "/v1/search", json={"vector": [0.1] * 3}), 400, "bad_vector", "expected 192"),
        (post(server, "/v1/search", json={"vector": [0.1] * 192, "k": 0}), 400, "bad_k", "k=0"),
        (post(server, "/v1/search", json={"vector": [0.1] * 192, "k": "x"}), 400, "bad_k", ""),
        (post(server, "/v1/search", json={"text": "a circle"}), 400, "no_text_encoder", ""),
        (post(server, "/v1/search", json={"text": "x", "vector": [0.0] * 192}), 400, "bad_query", "exactly one"),
        (post(server, "/v1/classify", files=[("images", png_bytes())]), 400, "no_classifier", "classifier=<dir>"),
    ]
    for response, status, kind, words in cases:
        got_status, got_kind, message = refusal(response)
        assert (got_status, got_kind) == (status, kind), (response.url, message)
        assert words.lower() in message.lower(), (response.url, message)


def test_a_slow_client_gets_408_and_frees_its_connection(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /v1/embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"images\": [".encode())
        answer = b""
        while chunk := sock.recv(4096):  # the head and the body may arrive in separate segments
            answer += chunk
    answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"kind": "read_timeout"' in answer and time.monotonic() - started < 8


def test_the_service_survives_bad_input_and_answers_good_requests(server: Server, encoder,
                                                                  images: list[Path]) -> None:
    for _ in range(3):
        post(server, "/v1/embed", files=[("images", b"junk")])
    health = requests.get(server.url + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["index"]["ntotal"] == len(images)
    response = post(server, "/v1/embed", files=[("images", images[0].read_bytes())])
    np.testing.assert_allclose(response.json()["embeddings"][0], encoder.encode_images(images[:1])[0], atol=1e-5)
    assert server.process.poll() is None


def test_bearer_token_guards_data_routes(server: Server) -> None:
    url = server.url
    one_line_error(requests.post(url + "/v1/embed", json={}, timeout=30), 401, "unauthorized", "missing bearer")
    wrong = {"Authorization": "Bearer nope"}
    one_line_error(requests.post(url + "/v1/search", json={}, headers=wrong, timeout=30), 401, "unauthorized", "wrong")
    one_line_error(requests.get(url + "/metrics", timeout=30), 401, "unauthorized")
    one_line_error(requests.get(url + "/v1/thumbnail", params={"id": "x"}, timeout=30), 401, "unauthorized")
    assert requests.get(url + "/health", timeout=30).status_code == 200
    assert requests.get(url + "/", timeout=30).status_code == 200
    assert requests.get(url + "/metrics", headers=AUTH, timeout=30).status_code == 200


def test_cors_only_for_configured_origins(server: Server) -> None:
    allowed = requests.options(server.url + "/v1/search", timeout=30, headers={
        "Origin": "http://allowed.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://allowed.test"
    other = requests.get(server.url + "/health", headers={"Origin": "http://evil.test"}, timeout=30)
    assert "access-control-allow-origin" not in other.headers


def test_openapi_documents_every_route(server: Server) -> None:
    spec = requests.get(server.url + "/openapi.json", timeout=30).json()
    for path in ("/v1/embed", "/v1/search", "/v1/classify", "/v1/thumbnail", "/health", "/metrics"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert requests.get(server.url + "/docs", timeout=30).status_code == 200


def test_metrics_count_requests_errors_latency_and_batches(server: Server, images: list[Path]) -> None:
    before = requests.get(server.url + "/metrics", headers=AUTH, timeout=30).text
    post(server, "/v1/embed", files=[("images", images[0].read_bytes())])
    post(server, "/v1/embed", files=[("images", b"junk")])
    requests.get(server.url + "/nowhere", headers=AUTH, timeout=30)
    text = requests.get(server.url + "/metrics", headers=AUTH, timeout=30).text

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("mmpretrain_serve_requests_total", route="/v1/embed", status="200") == 1
    assert grew("mmpretrain_serve_requests_total", route="/v1/embed", status="400") == 1
    assert grew("mmpretrain_serve_errors_total", route="/v1/embed", kind="undecodable_image") == 1
    assert grew("mmpretrain_serve_errors_total", route="unmatched", kind="unknown_route") == 1
    assert grew("mmpretrain_serve_request_seconds_count", route="/v1/embed") == 2
    assert metric(text, "mmpretrain_serve_request_seconds_bucket", route="/v1/embed", le="+Inf") >= 2
    assert grew("mmpretrain_serve_batch_size_count") == 1
    assert "mmpretrain_serve_queue_depth" in text


def test_without_index_search_is_refused_and_shutdown_finishes_in_flight_work(ckpt: Path, images: list[Path],
                                                                             encoder) -> None:
    with running_server(f"encoder={ckpt}", "max_wait_ms=1500", "max_batch=4") as running:
        one_line_error(requests.post(running.url + "/v1/search", json={"vector": [0.0] * 192}, timeout=30), 400,
                       "no_index", "index=<dir>")
        one_line_error(requests.get(running.url + "/v1/thumbnail", params={"id": "a"}, timeout=30), 400, "no_index")
        assert "access-control-allow-origin" not in requests.get(
            running.url + "/health", headers={"Origin": "http://allowed.test"}, timeout=30).headers
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.post, running.url + "/v1/embed", timeout=60,
                                  files=[("images", images[0].read_bytes())])
            time.sleep(0.5)  # the request now waits in the batcher (max_wait_ms=1500)
            running.process.send_signal(signal.SIGTERM)
            response = pending.result()
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["embeddings"][0], encoder.encode_images(images[:1])[0], atol=1e-5)
        assert running.process.wait(60) == 0


def test_bad_configuration_is_one_line_and_exit_1(ckpt: Path, tmp_path: Path) -> None:
    for args, words in ((["index=" + str(tmp_path / "missing")], "no such folder"),
                        (["max_batch=0"], "max_batch=0 must be > 0"),
                        (["colour=blue"], "unknown key 'colour'")):
        done = subprocess.run([*serve_command(), f"encoder={ckpt}", *args], capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("mmpretrain-serve: error:") and words in done.stderr
    code = ("import sys; sys.argv = ['mmpretrain-serve', '--help']; from mmpretrain.cli import entry; "
            "entry.console('mmpretrain-serve')(); assert 'torch' not in sys.modules, 'help imported torch'")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "max_wait_ms=5.0" in shown.stdout and "host=127.0.0.1" in shown.stdout
    version = subprocess.run([sys.executable, "-m", "mmpretrain", "serve", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.startswith("mmpretrain-serve ")
