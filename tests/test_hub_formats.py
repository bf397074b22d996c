"""Checkpoint formats: official MoBY conversion, architectures read from weights, registry matching, timm state
dicts, and publishing to the own format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from hub_support import (
    MEAN,
    STD,
    SWIN,
    TINY,
    TINY_ARCH,
    FakeYacsConfig,
    _official_moby_checkpoint,
    _resnet_file,
    _same_outputs,
    _Server,
    _tiny_swin,
    _training_checkpoint,
    _write_registry,
    hub_env,
    server,
)

from mmpretrain import hub
from mmpretrain._io import sha256_file

__all__ = ["hub_env", "server"]  # fixtures from hub_support, used by name (hub_env: autouse)

# ----------------------------------------------------------------------------------------------- formats


def test_official_moby_layout_converts_and_loads_strict(tmp_path: Path) -> None:
    source = _tiny_swin()
    path, marker = tmp_path / "moby_official.pth", tmp_path / "pwned"
    _official_moby_checkpoint(source, path, marker)

    raw = hub.safe_torch_load(path)
    assert not marker.exists()
    assert not isinstance(raw["config"], FakeYacsConfig)
    assert raw["config"]["MODEL"]["NAME"] == "moby_swin_tiny"
    assert raw["exploit"].target.endswith(".system")

    converted = hub.convert_moby_official(raw)
    assert not any(k.endswith(("relative_position_index", "attn_mask")) or k.startswith("head.") for k in converted)
    assert "layers.1.downsample.reduction.weight" in converted and "layers.0.downsample.norm.weight" not in converted

    loaded = hub.load_checkpoint(path, architecture=TINY_ARCH)
    assert loaded.format == "moby-official" and loaded.config["preprocessing"]["image_size"] == 32
    _same_outputs(hub.build_backbone(loaded), source)
    assert not marker.exists()

    del loaded.state_dict["layers.1.downsample.reduction.weight"]
    with pytest.raises(hub.HubError, match=r"missing keys \['layers\.1\.downsample\.reduction\.weight'\]"):
        hub.build_backbone(loaded)
    with pytest.raises(hub.HubError, match=r"neither a Swin nor a ViT; pass architecture="):
        hub.load_checkpoint(_resnet_file(tmp_path / "resnet.pth"))


SHIFTED = {"img_size": 32, "embed_dim": 24, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4], "window_size": 2,
           "patch_size": 4, "mlp_ratio": 4.0}  # stages 0-1 shift their windows, so the file holds attn_mask


def test_official_moby_swin_architecture_is_read_from_its_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model(SWIN, num_classes=0, **SHIFTED).eval()
    path = tmp_path / "my_moby_run.pth"
    _official_moby_checkpoint(source, path, tmp_path / "pwned")
    loaded = hub.load_checkpoint(path)
    assert loaded.config["architecture"] == {"name": SWIN, "kwargs": SHIFTED}
    assert loaded.config["preprocessing"]["image_size"] == 32
    _same_outputs(hub.build_backbone(loaded), source)
    timm_layout = tmp_path / "timm_layout.pth"
    torch.save(source.state_dict(), timm_layout)
    guessed = hub.load_checkpoint(timm_layout).config["architecture"]["kwargs"]
    drop = ("img_size",)
    assert {k: v for k, v in guessed.items() if k not in drop} == {k: v for k, v in SHIFTED.items() if k not in drop}


def test_vit_architecture_is_read_from_its_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"embed_dim": 128, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32, "mlp_ratio": 2.0}
    source = timm.create_model("vit_small_patch16_224", num_classes=0, **kwargs).eval()
    path = tmp_path / "moby_deit.pth"
    torch.save({"model": {f"encoder.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = hub.load_checkpoint(path)
    assert loaded.config["architecture"]["kwargs"] == {**kwargs, "qkv_bias": True, "class_token": True}
    _same_outputs(hub.build_backbone(loaded), source)


def test_inferred_architecture_is_checked_against_the_weights(tmp_path: Path) -> None:
    from mmpretrain.hub.infer import _refuse_misfit

    state = timm.create_model(SWIN, num_classes=0, **SHIFTED).state_dict()
    want = r"does not fit them: shapes \(checkpoint vs model\) \['layers.0.blocks.0.mlp"
    with pytest.raises(hub.HubError, match=want):
        _refuse_misfit({"name": SWIN, "kwargs": {**SHIFTED, "mlp_ratio": 2.0}}, state, "x.pth")


def test_registry_entry_matched_by_file_name_or_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    path = folder / "moby_swin_t_300ep_pretrained.pth"  # the official release's name, as a user downloaded it
    _official_moby_checkpoint(_tiny_swin(), path, tmp_path / "pwned")
    loaded = hub.load_checkpoint(path)
    assert loaded.config["architecture"] == {"name": "swin_tiny_patch4_window7_224", "kwargs": {}}
    renamed = folder / "renamed.pth"
    renamed.write_bytes(path.read_bytes())
    registry = _write_registry(tmp_path / "reg.json", {"mine": {
        "url": "https://example.invalid/other_name.pth", "format": "moby-official", "architecture": TINY_ARCH,
        "sha256": sha256_file(renamed)}})
    by_hash = hub.load_checkpoint(renamed, registry=registry)
    assert by_hash.config["architecture"]["kwargs"] == json.loads(json.dumps(TINY))
    _same_outputs(hub.build_backbone(by_hash), _tiny_swin())


def test_plain_timm_state_dict(tmp_path: Path) -> None:
    source = _tiny_swin(seed=3)
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = hub.load_checkpoint(path, architecture=TINY_ARCH)
    assert loaded.format == "timm"
    _same_outputs(hub.build_backbone(loaded), source)


def test_publish_load_build_roundtrip(server: _Server, tmp_path: Path) -> None:
    source = _tiny_swin(seed=1)
    ckpt = tmp_path / "epoch=2-step=20.ckpt"
    _training_checkpoint(source, ckpt)
    out = tmp_path / "published"
    entry = hub.publish(ckpt, out, name="tiny_moby")

    weights = out / "model.safetensors"
    assert (out / "model.safetensors.sha256").read_text().split()[0] == entry["sha256"] == sha256_file(weights)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == {"name": SWIN, "kwargs": json.loads(json.dumps(dict(TINY, drop_path_rate=0.2)))}
    assert config["preprocessing"] == {
        "image_size": 32, "mean": MEAN, "std": STD, "interpolation": "bilinear", "crop_pct": 0.875,
    }
    assert config["training"]["lr"] == 1e-3 and "tokenizer" not in config
    assert entry["format"] == "mmpretrain" and entry["url"] == weights.resolve().as_uri()

    served = server.serve("/m/model.safetensors", weights.read_bytes())
    registry = _write_registry(
        tmp_path / "pasted.json", {entry["name"]: {k: v for k, v in entry.items() if k != "name"}}
    )
    for where in (out, weights, served, "tiny_moby", ckpt):
        loaded = hub.load_checkpoint(where, registry=registry, progress=False)
        assert loaded.format == ("lightning" if where == ckpt else "mmpretrain")
        assert loaded.config["preprocessing"]["mean"] == MEAN
        _same_outputs(hub.build_backbone(loaded), source)
    assert hub.publish(ckpt, tmp_path / "default_name")["name"] == "epoch_2-step_20"


def test_publish_names_the_run_and_writes_files_alike(tmp_path: Path) -> None:
    run = tmp_path / "logs/moby_demo/runs/2026-12-01_18-50-22/checkpoints"
    run.mkdir(parents=True)
    _training_checkpoint(_tiny_swin(seed=1), run / "last.ckpt")
    old = os.umask(0o022)
    try:
        entry = hub.publish(run / "last.ckpt", tmp_path / "out")
    finally:
        os.umask(old)
    assert entry["name"] == "moby_demo_2026-12-01_18-50-22"
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "out").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "model.safetensors.sha256": 0o644}
    trial = tmp_path / "logs/moby_demo/multiruns/2026-12-01_19-00-00/3/checkpoints/epoch_010.ckpt"
    assert hub.publishing.run_name(trial) == "moby_demo_2026-12-01_19-00-00_3_epoch_010"
