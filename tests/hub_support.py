"""Shared pieces of the hub tests: a real HTTP server on 127.0.0.1 (Range, If-Range, failures on demand), a private
cache, and tiny models and checkpoint files in the layouts the hub reads."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch

SWIN = "swin_tiny_patch4_window7_224"
TINY = {"img_size": 32, "embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 2, 2), "window_size": 2}
TINY_ARCH = {"name": SWIN, "kwargs": TINY}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


# ----------------------------------------------------------------------------------------------- HTTP server


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range/If-Range and ETag support; can fail, cut short, drip or lie on demand."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append(
                {"path": self.path, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")}
            )
            fail = srv.fail_next > 0
            srv.fail_next -= int(fail)
            truncate = srv.truncate_next > 0 or self.path in srv.always_short
            srv.truncate_next -= int(srv.truncate_next > 0)
        if fail:
            self.send_error(503, "try again")
            return
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        start = 0
        requested = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if requested and (if_range is None or if_range == etag):
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Content-Type", srv.content_types.get(self.path, "application/octet-stream"))
        if self.path not in srv.no_validators:
            self.send_header("ETag", etag)
        self.end_headers()
        if truncate:
            payload = payload[: len(payload) // 2]
        step = 1 if self.path in srv.drip else 65536
        for i in range(0, len(payload), step):
            try:
                self.wfile.write(payload[i : i + step])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(srv.drip.get(self.path, srv.delay))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.fail_next = 0
        self.truncate_next = 0
        self.delay = 0.0
        self.always_short: set[str] = set()
        self.no_validators: set[str] = set()
        self.content_types: dict[str, str] = {}
        self.drip: dict[str, float] = {}
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.running = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url(path)

    def gets(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]

    def stop(self) -> None:
        if self.running:
            self.shutdown()
            self.server_close()
            self._thread.join()
            self.running = False


@pytest.fixture
def server() -> _Server:
    srv = _Server()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, no offline flags or user registries from the caller, and no proxy for 127.0.0.1."""
    home = tmp_path / "home"
    monkeypatch.setenv("MMPRETRAIN_HOME", str(home))
    for var in ("MMPRETRAIN_OFFLINE", "HF_HUB_OFFLINE", "MMPRETRAIN_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return home


@pytest.fixture
def blob() -> bytes:
    return os.urandom(300_000)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_registry(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _blob_registry(tmp_path: Path, url: str, sha256: str | None) -> Path:
    entry = {"url": url, "format": "timm", "architecture": SWIN, "sha256": sha256}
    return _write_registry(tmp_path / "registry.json", {"blob": entry})


# ----------------------------------------------------------------------------------------------- models


def _tiny_swin(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(SWIN, num_classes=0, **TINY).eval()


def _same_outputs(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), atol=1e-6, rtol=0)


class FakeYacsConfig(dict):
    """Stands in for yacs' CfgNode: a dict subclass with instance state, pickled by class reference."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["__immutable__"] = True


class Exploit:
    """Unpickling this with plain pickle would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _official_moby_checkpoint(model: torch.nn.Module, path: Path, marker: Path) -> None:
    """Write ``model`` the way Transformer-SSL releases it: the original Swin layout inside a full MoBY state."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
        state[f"encoder.{key}"] = value.clone()
        state[f"encoder_k.{key}"] = torch.randn_like(value)
    for key, value in model.named_buffers():  # the original code saves both buffers (shifted blocks: attn_mask)
        if key.endswith(("relative_position_index", "attn_mask")):
            state[f"encoder.{key}"] = value.clone()
            state[f"encoder_k.{key}"] = value.clone()
    state["encoder.head.weight"] = torch.randn(10, model.num_features)
    for branch in ("projector", "projector_k"):
        state[f"{branch}.linear_hidden.1.weight"] = torch.randn(16, model.num_features)
        state[f"{branch}.linear_hidden.2.weight"] = torch.randn(16)
        state[f"{branch}.linear_out.weight"] = torch.randn(8, 16)
    state["predictor.linear_hidden.1.weight"] = torch.randn(16, 8)
    state["predictor.linear_out.weight"] = torch.randn(8, 16)
    state["queue1"] = torch.randn(8, 32)
    state["queue2"] = torch.randn(8, 32)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    config = FakeYacsConfig(MODEL={"TYPE": "swin", "NAME": "moby_swin_tiny"}, TRAIN={"EPOCHS": 300})
    torch.save({"model": state, "config": config, "exploit": Exploit(marker), "epoch": 299}, path)


def _training_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """A Lightning checkpoint shaped like the one ``mmpretrain.ssl.MoBY`` writes."""
    state = {}
    for key, value in model.state_dict().items():
        state[f"backbone.{key}"] = value.clone()
        state[f"target_backbone.{key}"] = value + 1
    for prefix in ("projector", "target_projector", "predictor"):
        state[f"{prefix}.0.weight"] = torch.randn(16, 8)
    state.update(queue1=torch.randn(8, 32), queue2=torch.randn(8, 32), queue_ptr=torch.zeros(1, dtype=torch.long))
    hparams = {
        "backbone": SWIN,
        "backbone_kwargs": dict(TINY, drop_path_rate=0.2),
        "image_size": 32,
        "mean": MEAN,
        "std": STD,
        "interpolation": "bilinear",
        "lr": 1e-3,
        "queue_size": 32,
    }
    ckpt = {
        "epoch": 2,
        "global_step": 20,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": state,
        "hyper_parameters": hparams,
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    torch.save(ckpt, path)


def _resnet_file(path: Path) -> Path:
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    return path
