"""Checkpoint contents are data: embedded configs meet a schema and the weights confirm the sizes before building."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mmpretrain import hub
from mmpretrain.cli.hub import main as hub_main

VIT = "vit_tiny_patch16_224"
VIT_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}
PRE = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "interpolation": "bilinear", "crop_pct": 1.0}


def _published(folder: Path, config: object, state: dict[str, torch.Tensor] | None = None) -> Path:
    """A file in the own format whose embedded config says whatever the test wants."""
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = timm.create_model(VIT, num_classes=0, **VIT_KW).state_dict()
    path = folder / hub.WEIGHTS_FILE
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"mmpretrain_config": json.dumps(config)})
    return path


def _config(**kwargs: object) -> dict:
    return {"architecture": {"name": VIT, "kwargs": dict(VIT_KW, **kwargs)}, "preprocessing": dict(PRE)}


def test_a_good_config_loads_and_builds(tmp_path: Path) -> None:
    loaded = hub.load_checkpoint(_published(tmp_path / "ok", _config()))
    assert hub.build_backbone(loaded).num_features == 24


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
        ({"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, "pretrained_cfg_overlay"),
        ({"pretrained_strict": False}, "pretrained_strict"),
        ({"act_layer": "os.system"}, "act_layer"),
    ],
)
def test_kwargs_that_do_not_describe_shape_are_refused(tmp_path: Path, kwargs: dict, key: str) -> None:
    path = _published(tmp_path / "bad", _config(**kwargs))
    with pytest.raises(hub.CheckpointConfigError, match=rf"{path}.*architecture\.kwargs\.{key}"):
        hub.load_checkpoint(path)


def test_an_hf_hub_name_is_refused_offline_before_any_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMPRETRAIN_OFFLINE", "1")
    config = {"architecture": {"name": "hf-hub:someone/evil", "kwargs": {}}, "preprocessing": dict(PRE)}
    path = _published(tmp_path / "hf", config)
    refused = r"architecture\.name.*'hf-hub:someone/evil' is not a plain timm"
    with pytest.raises(hub.CheckpointConfigError, match=refused):
        hub.load_checkpoint(path)
    registry = tmp_path / "registry.json"  # the same rule holds for a registry entry's architecture
    registry.write_text(json.dumps({"x": {"url": path.as_uri(), "format": "timm",
                                          "architecture": {"name": VIT, "kwargs": {"checkpoint_path": "/x"}}}}))
    plain = tmp_path / "plain.safetensors"
    save_file(timm.create_model(VIT, num_classes=0, **VIT_KW).state_dict(), str(plain))
    with pytest.raises(hub.CheckpointConfigError, match="checkpoint_path"):
        hub.load_checkpoint(plain, architecture={"name": VIT, "kwargs": {"checkpoint_path": "/x"}})


def test_sizes_are_confirmed_by_the_weights_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred bytes asking for embed_dim=8192, depth=8 (~25 GB) is refused without allocating it."""
    tiny = {"patch_embed.proj.weight": torch.zeros(8192, 3, 8, 8, dtype=torch.float16)[:1]}
    path = _published(tmp_path / "huge", _config(embed_dim=8192, depth=8, num_heads=8), tiny)
    assert path.stat().st_size < 2000
    devices: list[str] = []
    create = timm.create_model

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        devices.append(str(torch.get_default_device()))
        return create(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    loaded = hub.load_checkpoint(path)
    start = time.monotonic()
    with pytest.raises(hub.CheckpointConfigError, match=r"huge.*weights do not fit .*shapes \(checkpoint vs model\)"):
        hub.build_backbone(loaded)
    assert time.monotonic() - start < 10
    assert devices and set(devices) == {"meta"}  # nothing was built for real
    with pytest.raises(hub.CheckpointConfigError, match=r"architecture\.kwargs\.embed_dim.*\[1, 16384\]"):
        hub.load_checkpoint(_published(tmp_path / "wide", _config(embed_dim=1 << 20)))
    with pytest.raises(hub.CheckpointConfigError, match=r"architecture\.kwargs\.depth.*\[1, 128\]"):
        hub.load_checkpoint(_published(tmp_path / "deep", _config(depth=100_000)))


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("std", [0, 0, 0], r"preprocessing\.std\[0\].*> 0"),
        ("mean", [0.5, float("nan"), 0.5], r"preprocessing\.mean\[1\].*finite"),
        ("std", [0.2, float("inf"), 0.2], r"preprocessing\.std\[1\].*finite"),
        ("image_size", 0, r"preprocessing\.image_size"),
        ("mean", [0.5], r"preprocessing\.mean.*3 numbers"),
    ],
)
def test_preprocessing_numbers_are_finite_with_positive_std(tmp_path: Path, field: str, value: object,
                                                            key: str) -> None:
    config = _config()
    config["preprocessing"][field] = value
    path = _published(tmp_path / "pre", config)
    with pytest.raises(hub.CheckpointConfigError, match=rf"{path}.*{key}"):
        hub.load_checkpoint(path)


def _lightning(path: Path, hparams: dict) -> Path:
    model = timm.create_model(VIT, num_classes=0, **VIT_KW)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    base = {"backbone": VIT, "backbone_kwargs": VIT_KW, "image_size": 32, "mean": PRE["mean"], "std": PRE["std"],
            "interpolation": "bilinear"}
    torch.save({"state_dict": state, "hyper_parameters": {**base, **hparams}}, path)
    return path


def test_shared_hyper_parameters_are_not_expanded_and_cycles_are_named(tmp_path: Path) -> None:
    node: dict = {"leaf": list(range(1000))}
    for _ in range(20):  # each level refers to the one below twice: 2**20 copies if expanded
        node = {"a": node, "b": node}
    ckpt = _lightning(tmp_path / "shared.ckpt", {"extra": node})
    start = time.monotonic()
    entry = hub.publish(ckpt, tmp_path / "out")
    assert time.monotonic() - start < 10
    written = (tmp_path / "out" / hub.CONFIG_FILE).stat().st_size
    assert written < 100_000
    training = json.loads((tmp_path / "out" / hub.CONFIG_FILE).read_text())["training"]
    assert training["extra"]["b"] == "<same as training.extra.a>"
    assert hub.load_checkpoint(tmp_path / "out").config["training"]["extra"]["a"]["b"].startswith("<same as")
    assert entry["name"] == "shared"

    loop: dict = {"x": 1}
    loop["self"] = {"again": loop}
    ckpt = _lightning(tmp_path / "loop.ckpt", {"extra": loop})
    refused = r"loop\.ckpt: hyper-parameter 'training\.extra\.self\.again' refers"
    with pytest.raises(hub.CheckpointConfigError, match=refused):
        hub.load_checkpoint(ckpt)


def test_unreadable_files_and_bad_configs_raise_project_errors(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(hub.CheckpointReadError, match=r"empty\.pth"):
        hub.load_checkpoint(empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(hub.CheckpointReadError, match=r"garbage\.pth"):
        hub.load_checkpoint(garbage)
    header = tmp_path / "header.safetensors"
    header.write_bytes(struct.pack("<Q", 20) + b'{"a": not json}xxxxx')
    with pytest.raises(hub.CheckpointReadError, match=r"header\.safetensors: not a readable safetensors"):
        hub.load_checkpoint(header)
    for name, config, match in [
        ("list", [1, 2], "must be a JSON object, got list"),
        ("nokeys", {"name": "x"}, r"lacks \['architecture', 'preprocessing'\]"),
        ("badarch", {"architecture": 5, "preprocessing": PRE}, r"'architecture': must be an object"),
    ]:
        folder = tmp_path / name
        _published(folder, {"placeholder": True})
        save_file({"w": torch.zeros(1)}, str(folder / hub.WEIGHTS_FILE))  # no embedded config: config.json is read
        (folder / hub.CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(hub.CheckpointConfigError, match=rf"{folder / hub.CONFIG_FILE}.*{match}|{match}"):
            hub.load_checkpoint(folder)
    (tmp_path / "list" / hub.CONFIG_FILE).write_text("{not json")
    with pytest.raises(hub.CheckpointConfigError, match=r"config\.json: the checkpoint config is not valid JSON"):
        hub.load_checkpoint(tmp_path / "list")
    assert hub_main(["convert", str(empty), str(tmp_path / "c"), "--arch", VIT]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty.pth" in err


def test_video_text_pooling_is_one_of_the_known_ones() -> None:
    from mmpretrain.hub.schema import validate_config

    path = "x.ckpt"
    arch = {
        "frame_encoder": {"name": VIT, "kwargs": dict(VIT_KW)},
        "text_encoder": {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "intermediate_size": 64},
        "fusion": {"vocab_size": 100, "num_frames": 4, "width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16,
                   "mvm_dim": 24, "text_pooling": "mean"},
    }
    config = {"kind": "video", "architecture": arch, "preprocessing": dict(PRE, num_frames=4, max_text_len=16)}
    validate_config(config, path)
    arch["fusion"]["text_pooling"] = "max"
    with pytest.raises(hub.CheckpointConfigError, match=r"x\.ckpt.*architecture\.fusion\.text_pooling.*'max'"):
        validate_config(config, path)
