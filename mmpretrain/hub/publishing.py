"""Publishing: a training checkpoint (or any loadable one) into the own format, ``model.safetensors`` with its
config, ``config.json`` and a sha256 sidecar, and the registry entry to paste."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mmpretrain._io import sha256_file, write_text_atomic
from mmpretrain.hub.building import build_backbone
from mmpretrain.hub.download import sidecar_path, write_sidecar
from mmpretrain.hub.errors import CheckpointConfigError
from mmpretrain.hub.formats import (
    CONFIG_FILE,
    CONFIG_METADATA_KEY,
    WEIGHTS_FILE,
    is_video,
    lightning_config,
    video_lightning_config,
)
from mmpretrain.hub.loading import load_checkpoint
from mmpretrain.hub.registry import RegistryEntry, check_name
from mmpretrain.hub.safe_load import safe_torch_load
from mmpretrain.hub.schema import validate_config


def _write_published(out_dir: Path, state: Mapping[str, torch.Tensor], config: dict[str, Any]) -> str:
    """Write ``model.safetensors`` (config in its metadata), ``config.json`` and the sha256 sidecar atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tmp = out_dir / f"{WEIGHTS_FILE}.tmp"
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)})
    os.replace(tmp, weights)
    digest = sha256_file(weights)
    write_text_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_sidecar(weights, digest)
    mode = _new_file_mode()
    for written in (weights, out_dir / CONFIG_FILE, sidecar_path(weights)):
        written.chmod(mode)  # temporaries may be private (0600); the published files share the umask's mode
    return digest


def _new_file_mode() -> int:
    """The mode a plain `open(..., "w")` gives a new file under this process's umask (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def run_name(checkpoint: Path) -> str:
    """A published model's default name: `<experiment>_<run>` for `logs/<experiment>/runs/<run>/checkpoints/last.ckpt`
    (and `..._<stem>` for other checkpoint files, `<run>_<trial>` for sweep trials), else the file's stem."""
    parts = checkpoint.resolve().parts
    if len(parts) < 5 or parts[-2] != "checkpoints":
        return checkpoint.stem
    if parts[-5] == "multiruns" and len(parts) >= 6:
        experiment, run = parts[-6], f"{parts[-4]}_{parts[-3]}"
    elif parts[-4] == "runs":
        experiment, run = parts[-5], parts[-3]
    else:
        return checkpoint.stem
    return "_".join([experiment, run] + ([] if checkpoint.stem == "last" else [checkpoint.stem]))


def _published_entry(out_dir: Path, name: str, url: str | None, digest: str, config: dict[str, Any]) -> dict[str, Any]:
    video = is_video(config)
    entry = RegistryEntry(
        name=name,
        url=url or (out_dir / WEIGHTS_FILE).resolve().as_uri(),
        format="mmpretrain",
        architecture={"name": "video_fusion", "kwargs": {}} if video else config["architecture"],
        sha256=digest,
        preprocessing=config["preprocessing"],
    )
    return entry.to_dict()


def _default_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-+") or "checkpoint"


def publish(
    training_checkpoint: str | Path, out_dir: str | Path, name: str | None = None, url: str | None = None
) -> dict[str, Any]:
    """Turn a Lightning training checkpoint into the own format and return the registry entry to paste.

    Writes ``model.safetensors`` (online backbone only), ``config.json`` (architecture, preprocessing, tokenizer,
    training hyper-parameters) and ``model.safetensors.sha256`` into ``out_dir``.

    Args:
        training_checkpoint: a ``.ckpt`` of :mod:`mmpretrain.ssl` (``state_dict`` with ``backbone.*`` and
            ``hyper_parameters`` with ``backbone``, ``backbone_kwargs``, ``image_size``, ``mean``, ``std``,
            ``interpolation``).
        out_dir: folder to write to.
        name: registry name; defaults to `<experiment>_<run>` of the run folder (see :func:`run_name`).
        url: where ``model.safetensors`` will be hosted; defaults to its local ``file://`` URI.
    """
    path = Path(training_checkpoint)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise CheckpointConfigError(f"{path}: not a Lightning training checkpoint (no 'state_dict')")
    name = check_name(name, "name") if name is not None else _default_name(run_name(path))
    read = video_lightning_config if "video_model" in ckpt else lightning_config
    config, state = read(ckpt, str(path))
    config = validate_config(config, str(path))
    config["name"] = name
    out = Path(out_dir)
    digest = _write_published(out, state, config)
    return _published_entry(out, name, url, digest, config)


def convert_to_published(
    source: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    architecture: str | Mapping[str, Any] | None = None,
    url: str | None = None,
    registry: str | Path | None = None,
) -> dict[str, Any]:
    """Convert any loadable checkpoint (e.g. official MoBY) to the own format, after checking it loads strict."""
    loaded = load_checkpoint(source, architecture=architecture, registry=registry)
    build_backbone(loaded)
    config = {k: v for k, v in loaded.config.items() if k != "name"}
    name = check_name(name, "name") if name is not None else _default_name(Path(str(source)).stem)
    config["name"] = name
    config["converted_from"] = {"source": str(source), "format": loaded.format}
    out = Path(out_dir)
    digest = _write_published(out, loaded.state_dict, config)
    return _published_entry(out, name, url, digest, config)
