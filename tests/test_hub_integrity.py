"""Checkpoints that lie: tensors whose storage is smaller than their shape, broken continued-pretraining files
(non-tensors, NaN/Inf, a wrong queue pointer), and a cache that fills up during a download."""

from __future__ import annotations

import errno
import hashlib
import importlib
from pathlib import Path

import pytest
import timm
import torch
from hub_support import (
    SWIN,
    TINY,
    TINY_ARCH,
    _official_moby_checkpoint,
    _Server,
    _tiny_swin,
    _training_checkpoint,
    blob,
    hub_env,
    server,
)

from mmpretrain import hub
from mmpretrain.cli.train import initialize_model
from mmpretrain.ssl import MoBY

__all__ = ["blob", "hub_env", "server"]  # fixtures used by name
download_module = importlib.import_module("mmpretrain.hub.download")  # the package exports a function of that name


# ----------------------------------------------------------------------------------------------- storage


@pytest.mark.parametrize("view", ["stride0", "overlap"])
def test_a_tensor_bigger_than_its_storage_is_refused_before_any_model_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, view: str
) -> None:
    state = _tiny_swin().state_dict()
    shape = state["patch_embed.proj.weight"].shape  # (24, 3, 4, 4): 1152 elements
    if view == "stride0":
        state["patch_embed.proj.weight"] = torch.zeros(1).expand(shape)
    else:
        state["patch_embed.proj.weight"] = torch.zeros(2000).as_strided(shape, (1, 1, 1, 1))
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    built = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a))
    with pytest.raises(hub.CheckpointReadError) as info:
        hub.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "'patch_embed.proj.weight'" in message and "(24, 3, 4, 4)" in message
    assert "stride-0 or overlapping view" in message and not built


def test_views_that_share_nothing_still_load(tmp_path: Path) -> None:
    """A transposed or sliced tensor is a view too, backed by enough bytes: accepted."""
    source = _tiny_swin()
    state = {k: v.t().contiguous().t() if v.ndim == 2 else v for k, v in source.state_dict().items()}
    state["norm.weight"] = torch.cat([state["norm.weight"], torch.ones(10)])[: state["norm.weight"].numel()]
    path = tmp_path / "views.pth"
    torch.save(state, path)
    assert hub.load_checkpoint(path, architecture=TINY_ARCH).state_dict.keys() == state.keys()


# ----------------------------------------------------------------------------------------------- model.init


def _moby() -> MoBY:
    return MoBY(backbone=SWIN, backbone_kwargs=TINY, image_size=32, proj_hidden_dim=16, proj_dim=8, queue_len=32)


def _official(tmp_path: Path, change) -> Path:
    """An official-layout MoBY file (see hub_support) with ``change`` applied to its ``model`` dict."""
    raw = tmp_path / "raw.pth"
    _official_moby_checkpoint(_tiny_swin(), raw, tmp_path / "pwned")
    model = dict(hub.safe_torch_load(raw)["model"])
    change(model)
    path = tmp_path / "moby_official.pth"
    torch.save({"model": model}, path)
    return path


def _set(key: str, value):
    def change(model: dict) -> None:
        model[key] = value(model[key]) if callable(value) else value

    return change


def _nan(tensor: torch.Tensor) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[0] = float("nan")
    return out


@pytest.mark.parametrize(
    ("change", "key", "what"),
    [
        (_set("encoder_k.patch_embed.proj.weight", "oops"), "model.encoder_k.patch_embed.proj.weight", "holds a str"),
        (_set("encoder.patch_embed.proj.weight", _nan), "model.encoder.patch_embed.proj.weight", "NaN or infinite"),
        (_set("encoder_k.norm.weight", lambda t: t + float("inf")), "model.encoder_k.norm.weight", "NaN or infinite"),
        (_set("queue1", _nan), "model.queue1", "NaN or infinite"),
        (_set("queue_ptr", torch.zeros(2, dtype=torch.long)), "model.queue_ptr", "must be one integer"),
        (_set("queue_ptr", torch.tensor([40])), "model.queue_ptr", "lies outside its queue of 32 keys"),
    ],
)
def test_model_init_from_a_broken_official_file_names_file_and_key(tmp_path: Path, change, key: str,
                                                                   what: str) -> None:
    path = _official(tmp_path, change)
    with pytest.raises(hub.CheckpointReadError) as info:
        initialize_model(_moby(), str(path))
    assert str(path) in str(info.value) and repr(key) in str(info.value) and what in str(info.value)


def test_model_init_from_a_training_checkpoint_with_nan_target_weights(tmp_path: Path) -> None:
    raw = tmp_path / "raw.ckpt"
    _training_checkpoint(_tiny_swin(), raw)
    ckpt = hub.safe_torch_load(raw)
    ckpt["state_dict"]["target_backbone.norm.bias"] = _nan(ckpt["state_dict"]["target_backbone.norm.bias"])
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    loaded = hub.load_checkpoint(path)  # the online backbone is fine
    want = r"last\.ckpt: 'state_dict\.target_backbone\.norm\.bias' holds NaN"
    with pytest.raises(hub.CheckpointReadError, match=want):
        hub.moby_training_state(loaded)


def test_a_clean_official_file_still_initialises_every_part(tmp_path: Path) -> None:
    path = _official(tmp_path, lambda model: None)
    report = initialize_model(_moby(), str(path))
    assert report["backbone"] == report["target_backbone"] == report["queue1"] == "restored"


# ----------------------------------------------------------------------------------------------- disk full


class _FillingFile:
    """A partial download file on a disk that fills up after ``room`` bytes (ENOSPC, as the kernel reports it)."""

    def __init__(self, real, room: int) -> None:
        self.real, self.room = real, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.real.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name: str):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


def test_a_full_cache_is_a_download_error_naming_the_file_and_resumes_later(
    server: _Server, blob: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.serve("/model.pth", blob)
    real_open = download_module._open_part
    monkeypatch.setattr(download_module, "_open_part", lambda part, append: _FillingFile(real_open(part, append),
                                                                                           100_000))
    sha = hashlib.sha256(blob).hexdigest()
    with pytest.raises(hub.DownloadError) as info:
        hub.download(url, cache_dir=tmp_path / "cache", sha256=sha, progress=False, retries=0)
    message = str(info.value)
    part = next((tmp_path / "cache").rglob("model.pth.part"))
    assert str(part) in message and "No space left on device" in message
    assert f"{len(blob) - 100_000} bytes are needed" in message and "bytes are free on" in message
    assert not list((tmp_path / "cache").rglob("model.pth"))  # nothing under the final name
    monkeypatch.setattr(download_module, "_open_part", real_open)
    path = hub.download(url, cache_dir=tmp_path / "cache", sha256=sha, progress=False)
    assert path.read_bytes() == blob
    assert server.gets("/model.pth")[1]["range"] == "bytes=100000-"  # resumed where the disk filled up
