"""`timm:<model>`: timm's pretrained weights through the Hugging Face hub protocol, served from 127.0.0.1.

The "hub" is a local HTTP server answering as huggingface.co does (``HEAD``/``GET /<repo>/resolve/<rev>/<file>``
with ``X-Repo-Commit`` and ``ETag``), pointed at with ``HF_ENDPOINT``; the cache is an empty ``HF_HOME`` under tmp.
The served files are made here from timm's tiny ``test_vit`` architecture with seeded weights.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import mmpretrain
from mmpretrain.hub import DownloadError, OfflineError, load_checkpoint

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL = "test_vit"
REPO = "timm/test_vit.r160_in1k"  # timm's own hf_hub_id for test_vit
HUB_REPO = "tester/tiny-vit"  # a timm model pushed to the hub: config.json names its architecture


class _Hub(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]
    requests: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Hub

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        repo_and_file = self.path.split("?")[0].lstrip("/")
        repo, _, rest = repo_and_file.partition("/resolve/")
        filename = rest.partition("/")[2]
        data = self.server.files.get(f"{repo}/{filename}")
        if data is None:
            known = any(key.startswith(f"{repo}/") for key in self.server.files)
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if known else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)


def _weights(seed: int, **kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False, **kwargs)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _safetensors(state: dict[str, torch.Tensor], path: Path) -> bytes:
    save_file(state, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, torch.Tensor]]:
    """What the hub serves: timm's test_vit weights (classifier included, as timm publishes them) and a hub model."""
    return {REPO: _weights(1), HUB_REPO: _weights(2, img_size=32, num_classes=5)}


@pytest.fixture
def hub(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Hub]:
    """A local hub on 127.0.0.1 as HF_ENDPOINT, an empty HF_HOME, online."""
    pretrained_cfg = {"input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
                      "interpolation": "bilinear", "classifier": "head"}
    config = {"architecture": MODEL, "num_classes": 5, "num_features": 64, "model_args": {"img_size": 32},
              "pretrained_cfg": pretrained_cfg}  # as timm's push_to_hub writes it
    files = {f"{REPO}/model.safetensors": _safetensors(served[REPO], tmp_path / "a.safetensors"),
             f"{HUB_REPO}/model.safetensors": _safetensors(served[HUB_REPO], tmp_path / "b.safetensors"),
             f"{HUB_REPO}/config.json": json.dumps(config).encode()}
    server = _Hub(("127.0.0.1", 0), _Handler)
    server.files, server.requests = files, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("HF_HUB_OFFLINE", "MMPRETRAIN_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    yield server
    server.shutdown()
    server.server_close()


def _headless(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _assert_same(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_online_fetches_into_the_hf_cache_with_a_bar_then_offline_reads_the_cache(
    hub: _Hub, served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's bar, shown on a terminal, here too
    encoder = mmpretrain.load_encoder(f"timm:{MODEL}", device="cpu")
    _assert_same(encoder.backbone, _headless(served[REPO]))
    assert encoder.random_init is False and "timm pretrained" in encoder.name
    cached = list((tmp_path / "hf_home" / "hub" / "models--timm--test_vit.r160_in1k" / "snapshots").rglob("*"))
    assert [p.name for p in cached if p.is_file()] == ["model.safetensors"]
    assert any(r.startswith("GET /timm/test_vit.r160_in1k/resolve/") for r in hub.requests)
    assert "model.safetensors" in capfd.readouterr().err  # huggingface_hub's progress bar

    for var in ("HF_HUB_OFFLINE", "MMPRETRAIN_OFFLINE"):
        monkeypatch.setenv(var, "1")
        seen = len(hub.requests)
        offline = mmpretrain.load_encoder(f"timm:{MODEL}", device="cpu")
        _assert_same(offline.backbone, _headless(served[REPO]))
        assert len(hub.requests) == seen  # the cache answered; nothing went to the network
        monkeypatch.delenv(var)
    features = encoder.encode_images([np.full((40, 40, 3), 200, dtype=np.uint8)])
    assert features.shape == (1, encoder.embed_dim) and np.isfinite(features).all()


def test_offline_without_the_weights_stops_with_one_line_naming_the_model_and_the_cache(
    hub: _Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMPRETRAIN_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        mmpretrain.load_encoder(f"timm:{MODEL}", device="cpu")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"timm:{MODEL}: ")
    assert f"{REPO}/model.safetensors" in message and str(tmp_path / "hf_home" / "hub") in message
    assert "random_init=true" in message and hub.requests == []


def test_a_model_the_hub_lacks_fails_naming_it_and_the_endpoint_never_a_silent_random_init(hub: _Hub) -> None:
    with pytest.raises(DownloadError, match=r"^timm:test_vit2: cannot fetch timm/test_vit2\.r160_in1k/model\."
                                            r"safetensors or .*pytorch_model\.bin from http://127\.0\.0\.1:\d+"):
        mmpretrain.load_encoder("timm:test_vit2", device="cpu")
    with pytest.raises(mmpretrain.errors.ConfigError, match=r"timm:test_vitt: timm has no model 'test_vitt'; did you"):
        mmpretrain.load_encoder("timm:test_vitt", device="cpu")


def test_random_init_only_when_asked_seeded_fetching_nothing_and_recorded(
    hub: _Hub, served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing cached, offline: only a random init can be built
    first = mmpretrain.load_encoder(f"timm:{MODEL}", device="cpu", random_init=True)
    second = mmpretrain.load_encoder(f"timm:{MODEL}", device="cpu", random_init=True)
    assert first.random_init and first.name == f"timm:{MODEL} (random init)" and hub.requests == []
    _assert_same(second.backbone, first.backbone.state_dict())
    pretrained = _headless(served[REPO])
    assert not torch.equal(first.backbone.state_dict()["pos_embed"], pretrained["pos_embed"])
    loaded = load_checkpoint(f"timm:{MODEL}", random_init=True)
    assert loaded.config["random_init"] is True and loaded.path is None


def test_a_timm_model_pushed_to_the_hub_is_built_from_its_config(hub: _Hub, served) -> None:
    encoder = mmpretrain.load_encoder(f"timm:hf-hub:{HUB_REPO}", device="cpu")
    _assert_same(encoder.backbone, _headless(served[HUB_REPO]))
    assert encoder.preprocessing["image_size"] == 32 and encoder.preprocessing["interpolation"] == "bilinear"
    assert encoder.preprocessing["mean"] == [0.5, 0.5, 0.5]
    assert any("/tester/tiny-vit/resolve/" in r and r.endswith("config.json") for r in hub.requests)


def test_moby_continues_from_timm_weights_adapted_to_its_image_size(hub: _Hub, served, tmp_path: Path) -> None:
    from mmpretrain.cli.train import initialize_model
    from mmpretrain.ssl import MoBY

    torch.manual_seed(0)
    model = MoBY(backbone=MODEL, backbone_kwargs={"img_size": 32}, image_size=32, proj_hidden_dim=32, proj_dim=16,
                 queue_len=16)
    report = initialize_model(model, f"timm:{MODEL}")
    assert report["backbone"] == "restored" and report["projector"] == "fresh (not in the checkpoint)"
    path = tmp_path / "weights.safetensors"
    save_file(served[REPO], path)
    expected = timm.create_model(MODEL, pretrained=True, num_classes=0, img_size=32,
                                 pretrained_cfg_overlay={"file": str(path)})
    _assert_same(model.backbone, expected.state_dict())  # timm resampled the 10x10 position grid to 2x2
    _assert_same(model.target_backbone, expected.state_dict())


def test_store_manifests_and_metrics_say_which_weights_made_them(
    hub: _Hub, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import compose_cfg

    from mmpretrain.cli.eval import evaluate
    from mmpretrain.cli.extract import extract
    from mmpretrain.cli.index import index_command
    from mmpretrain.embeddings import open_store

    def store(name: str, *extra: str) -> dict:
        overrides = [f"encoder=timm:{MODEL}", f"input={demo_root}/val", f"output={tmp_path / name}", "trainer=cpu",
                     "trainer.enable_progress_bar=false", "num_workers=0", *extra]
        extract(compose_cfg("extract.yaml", overrides, tmp_path / f"{name}_run"))
        return open_store(tmp_path / name).manifest

    pretrained, random = store("pretrained"), store("random", "random_init=true")
    assert pretrained["extra"]["random_init"] is False and "timm pretrained" in pretrained["encoder"]
    assert random["extra"]["random_init"] is True and random["encoder"] == f"timm:{MODEL} (random init)"

    monkeypatch.setenv("MMPRETRAIN_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))  # nothing cached: only the random baseline can run
    index_command(compose_cfg("index.yaml", ["command=build", f"store={tmp_path / 'random'}",
                                             f"output={tmp_path / 'idx'}"], tmp_path / "build"))
    image = sorted((demo_root / "val").rglob("*.png"))[5]
    found = index_command(compose_cfg("index.yaml", ["command=search", f"index={tmp_path / 'idx'}", f"query={image}",
                                                     "k=2"], tmp_path / "search"))
    top = found["results"][0]["hits"][0]  # the query went through the store's random network: it finds itself
    assert top["path"] == str(image) and top["score"] == pytest.approx(1.0, abs=1e-4)
    common = [f"encoder=timm:{MODEL}", "task=fewshot", f"data.root={demo_root}/val", "n_way=2", "n_shot=1",
              "n_query=2", "episodes=5", "methods=[protonet]", "plot=false", "trainer=cpu"]
    evaluate(compose_cfg("eval.yaml", [*common, "random_init=true"], tmp_path / "eval"))
    record = json.loads((tmp_path / "eval/run/fewshot.json").read_text())
    assert record["random_init"] is True and record["encoder"] == f"timm:{MODEL} (random init)"
    with pytest.raises(OfflineError, match=f"timm:{MODEL}: "):
        evaluate(compose_cfg("eval.yaml", common, tmp_path / "eval_pretrained"))
