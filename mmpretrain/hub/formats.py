"""Checkpoint formats: what each holds, the official-MoBY conversion, and the weights every loader accepts.

Formats:
    ``mmpretrain``: this project's own format, ``model.safetensors`` (the config embedded in its metadata) plus
        ``config.json`` and ``model.safetensors.sha256``, written by :func:`mmpretrain.hub.publish`.
    ``moby-official``: the SwinTransformer/Transformer-SSL release files (``{"model": {"encoder.*", ...}}``).
    ``timm``: a plain state dict in timm's current key layout.
    ``lightning``: a training checkpoint of :mod:`mmpretrain.ssl` or :mod:`mmpretrain.video` (only read, never
        registered).

Video models (``config["kind"] == "video"``) carry their whole architecture (frame encoder, text encoder config,
fusion sizes) and their tokenizer in the config, so a single downloaded file rebuilds them offline.

Weights are data from a file of unknown origin: :func:`weight_tensors` refuses a non-tensor under a weight key and
a NaN or infinite value, naming the file and the key, before anything is built or trained from them. Loading
(:mod:`~mmpretrain.hub.loading`), publishing (:mod:`~mmpretrain.hub.publishing`) and building
(:mod:`~mmpretrain.hub.building`) live beside this module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmpretrain.hub.errors import CheckpointConfigError, CheckpointReadError
from mmpretrain.hub.registry import DEFAULT_PREPROCESSING
from mmpretrain.hub.schema import plain_json
from mmpretrain.models import set_kwargs

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONFIG_METADATA_KEY = "mmpretrain_config"


@dataclasses.dataclass
class LoadedCheckpoint:
    """Backbone weights in timm layout plus what is needed to rebuild and feed the model.

    ``config`` holds at least ``architecture`` (``{"name", "kwargs"}``) and ``preprocessing``; published files
    also carry ``tokenizer`` and ``training`` (the training hyper-parameters).
    """

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    source: str
    format: str
    path: Path | None = None


def weight_tensors(state: Mapping[str, Any], source: str, where: str = "") -> dict[str, torch.Tensor]:
    """``state`` when every value is a finite tensor, else `CheckpointReadError` naming ``source`` and the key.

    A NaN or infinite weight would be "restored" and make every output (and a training's first loss) NaN; a string or
    a number under a weight key would fail later as an AttributeError naming nothing.
    """
    for key, value in state.items():
        name = f"{where}{key}"
        if not isinstance(value, torch.Tensor):
            raise CheckpointReadError(f"{source}: {name!r} holds a {type(value).__name__}, not a tensor")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise CheckpointReadError(f"{source}: {name!r} holds NaN or infinite values; refusing to load it")
    return dict(state)


def convert_moby_official(state: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Turn an official MoBY checkpoint into timm backbone weights (load them strict into a ``num_classes=0`` model).

    Keeps the online ``encoder.`` only (drops ``encoder_k``, projectors, predictor and queues), drops the
    ``relative_position_index``/``attn_mask`` buffers and any classifier ``head``, and for Swin moves
    PatchMerging from the end of stage i (original layout) to the start of stage i+1 (timm layout).

    Args:
        state: the loaded file (``{"model": ...}``) or its ``model`` dict.
        source: what to name in errors.
    """
    model = state.get("model", state)
    if not isinstance(model, Mapping) or not any(k.startswith("encoder.") for k in model):
        raise KeyError("not an official MoBY checkpoint: no 'encoder.' keys under 'model'")
    out: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if not key.startswith("encoder."):
            continue
        key = key[len("encoder.") :]
        if key.endswith(("relative_position_index", "attn_mask")) or key.startswith("head."):
            continue
        out[key] = value
    weight_tensors(out, source, "model.encoder.")
    if any(k.startswith("layers.0.downsample.") for k in out):
        out = {re.sub(r"^layers\.(\d+)\.downsample\.", _next_stage, k): v for k, v in out.items()}
    return out


def _next_stage(match: re.Match[str]) -> str:
    return f"layers.{int(match.group(1)) + 1}.downsample."


def model_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture kwargs without the head and weight switches, which the hub always sets itself, and without keys
    set to ``None`` (left to timm's default, as :func:`~mmpretrain.models.create_backbone` does)."""
    return {k: v for k, v in set_kwargs(kwargs).items() if k not in ("num_classes", "pretrained")}


def lightning_config(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and online backbone weights (``backbone.*``) of a Lightning training checkpoint of this project."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    for key in ("backbone", "image_size", "mean", "std", "interpolation"):
        if key not in hparams:
            raise CheckpointConfigError(f"{source}: training checkpoint lacks hyper_parameters[{key!r}]")
    kwargs = hparams.get("backbone_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise CheckpointConfigError(f"{source}: hyper_parameters['backbone_kwargs'] must be a mapping")
    architecture = {"name": hparams["backbone"], "kwargs": model_kwargs(kwargs)}
    try:
        preprocessing = {
            "image_size": int(hparams["image_size"]),
            "mean": [float(x) for x in hparams["mean"]],
            "std": [float(x) for x in hparams["std"]],
            "interpolation": str(hparams["interpolation"]),
            "crop_pct": float(hparams.get("crop_pct", DEFAULT_PREPROCESSING["crop_pct"])),
        }
    except (TypeError, ValueError) as e:
        raise CheckpointConfigError(f"{source}: hyper_parameters hold unusable preprocessing values: {e}") from e
    config: dict[str, Any] = {"architecture": architecture, "preprocessing": preprocessing}
    if hparams.get("tokenizer") is not None:
        config["tokenizer"] = hparams["tokenizer"]
    config["training"] = plain_json(hparams, source)
    prefix = "backbone."
    state = _tensors(ckpt["state_dict"], source, prefix)
    if not state:
        raise CheckpointConfigError(f"{source}: training checkpoint has no '{prefix}*' weights in state_dict")
    return config, state


def _tensors(state: Any, source: str, prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix`` entries of a training checkpoint's ``state_dict``, prefix removed, each a finite tensor."""
    if not isinstance(state, Mapping):
        raise CheckpointConfigError(f"{source}: 'state_dict' must be a mapping of tensors, got {type(state).__name__}")
    part = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    return weight_tensors(part, source, f"state_dict.{prefix}")


def is_video(config: Mapping[str, Any]) -> bool:
    """True for a video–text model config (built by :mod:`mmpretrain.video`, not a timm backbone)."""
    return config.get("kind") == "video"


def video_lightning_config(ckpt: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Config and fusion-model weights (``model.*``; the frozen MVM teacher is left out) of a video training run."""
    if not isinstance(ckpt["video_model"], Mapping):
        kind = type(ckpt["video_model"]).__name__
        raise CheckpointConfigError(f"{source}: 'video_model' must be a mapping, got {kind}")
    config = dict(ckpt["video_model"])
    frame = (config.get("architecture") or {}).get("frame_encoder")
    if isinstance(frame, Mapping) and isinstance(frame.get("kwargs"), Mapping):
        # a checkpoint written before null frame-encoder keys were left out of its architecture
        frame = {**frame, "kwargs": model_kwargs(frame["kwargs"])}
        config["architecture"] = {**config["architecture"], "frame_encoder": frame}
    config["training"] = plain_json(dict(ckpt.get("hyper_parameters") or {}), source)
    prefix = "model."
    state = _tensors(ckpt["state_dict"], source, prefix)
    if not state:
        raise CheckpointConfigError(f"{source}: video training checkpoint has no '{prefix}*' weights in state_dict")
    return config, state
