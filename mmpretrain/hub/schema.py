"""What a checkpoint's embedded config may say: checkpoint contents are data, never instructions.

A config arrives inside a file of unknown origin and decides which model is built. :func:`validate_config` holds
it to a schema before anything is built: the architecture is a plain timm name (no ``hf-hub:`` or other scheme that
reaches the network or disk), its keyword arguments only describe shape (no ``checkpoint_path``, ``pretrained*``
or other switches that open files), every size lies within fixed limits, and the preprocessing numbers are finite
with ``std > 0``. :func:`on_meta` then builds the model on the ``meta`` device (no memory) and
:func:`mmpretrain.models.state_fits` compares every parameter's shape with the weights, so a tiny file cannot ask for
a model of many gigabytes: the real model is only built once the weights' own shapes confirm its size (and
:mod:`~mmpretrain.hub.safe_load` has refused weights whose storage is smaller than their shape).
:func:`plain_json` turns training hyper-parameters into JSON
without expanding shared references and refuses self-references.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from mmpretrain.hub.errors import CheckpointConfigError
from mmpretrain.models.fusion import SPACE_TIMES, TEMPORAL_STEMS, TEXT_POOLINGS, VTC_TEXTS

# Architecture keyword arguments that describe the model's shape (or, for the drop rates, do nothing in eval mode).
_MAX_WIDTH = 16384
_MAX_DEPTH = 128
_SHAPE_INTS = {
    "img_size": 4096,
    "patch_size": 1024,
    "in_chans": 64,
    "embed_dim": _MAX_WIDTH,
    "depth": _MAX_DEPTH,
    "depths": _MAX_DEPTH,
    "num_heads": 1024,
    "window_size": 1024,
    "reg_tokens": 1024,
    "head_dim": 4096,
    "output_stride": 64,
    # CNNs (ResNet, ConvNeXt): stage widths, stem width, blocks per stage, depthwise kernel sizes
    "channels": _MAX_WIDTH,
    "dims": _MAX_WIDTH,
    "stem_width": _MAX_WIDTH,
    "layers": _MAX_DEPTH,
    "kernel_sizes": 31,
}
_SHAPE_FLOATS = {"mlp_ratio": 64.0, "init_values": 1e3, "layer_scale_init_value": 1e3}
_SHAPE_BOOLS = {"qkv_bias", "class_token", "no_embed_class", "fc_norm", "pre_norm", "dynamic_img_size", "ape",
                "patch_norm", "strict_img_size", "qk_norm", "avg_down", "conv_mlp"}
_SHAPE_CHOICES = {"global_pool": {"", "avg", "token", "map", "avgmax", "max"},
                  "stem_type": {"", "deep", "deep_tiered", "patch", "overlap", "overlap_tiered", "overlap_act"}}
_DROP_RATES = {"drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate"}
SHAPE_KWARGS = frozenset(_SHAPE_INTS) | frozenset(_SHAPE_FLOATS) | _SHAPE_BOOLS | frozenset(_SHAPE_CHOICES)
_ARCH_NAME = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)?$")
_INTERPOLATIONS = {"bicubic", "bilinear", "nearest", "nearest-exact", "box", "hamming", "lanczos"}

_FUSION_LIMITS = {
    "vocab_size": 1_000_000,
    "num_frames": 1024,
    "width": _MAX_WIDTH,
    "depth": _MAX_DEPTH,
    "num_heads": 1024,
    "proj_dim": _MAX_WIDTH,
    "mvm_dim": 1 << 20,
    "image_size": 8192,
    "tubelet_frames": 63,
}
_FUSION_CHOICES = {"text_pooling": TEXT_POOLINGS, "temporal_stem": TEMPORAL_STEMS, "vtc_text": VTC_TEXTS,
                   "space_time": SPACE_TIMES}
_TEXT_LIMITS = {
    "hidden_size": _MAX_WIDTH,
    "num_hidden_layers": _MAX_DEPTH,
    "num_attention_heads": 1024,
    "intermediate_size": 4 * _MAX_WIDTH,
    "vocab_size": 1_000_000,
    "max_position_embeddings": 1 << 16,
    "type_vocab_size": 1024,
}
_TEXT_REFUSED = ("auto_map", "trust_remote_code", "custom_pipelines", "quantization_config")


def _fail(source: str, key: str, message: str) -> CheckpointConfigError:
    return CheckpointConfigError(f"{source}: config key {key!r}: {message}")


def _int(value: Any, source: str, key: str, limit: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
        raise _fail(source, key, f"{value!r} must be an integer in [{low}, {limit}]")
    return value


def _number(value: Any, source: str, key: str, limit: float, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(source, key, f"{value!r} must be a finite number")
    if not low <= value <= limit:
        raise _fail(source, key, f"{value!r} must lie in [{low}, {limit}]")
    return float(value)


def _ints(value: Any, source: str, key: str, limit: int) -> None:
    """One int or a short list of ints (per-stage sizes such as Swin's ``depths``/``num_heads``)."""
    items = value if isinstance(value, list | tuple) else [value]
    if not 1 <= len(items) <= 16:
        raise _fail(source, key, f"{value!r} must be an integer or a list of 1 to 16 integers")
    for i, item in enumerate(items):
        _int(item, source, f"{key}[{i}]" if isinstance(value, list | tuple) else key, limit)


def check_architecture(arch: Any, source: str, key: str = "architecture") -> dict[str, Any]:
    """``{"name": timm name, "kwargs": {shape kwargs}}`` or a :class:`CheckpointConfigError` naming the file and key."""
    if not isinstance(arch, Mapping):
        raise _fail(source, key, f"must be an object with 'name' and 'kwargs', got {type(arch).__name__}")
    unknown = set(arch) - {"name", "kwargs"}
    if unknown:
        raise _fail(source, key, f"unknown keys {sorted(unknown)}")
    name = arch.get("name")
    if not isinstance(name, str) or not _ARCH_NAME.match(name):
        raise _fail(source, f"{key}.name", f"{name!r} is not a plain timm model name (no 'hf-hub:' or other "
                                          "scheme, no path: weights come from this checkpoint only)")
    import timm

    if not timm.is_model(name):
        raise _fail(source, f"{key}.name", f"{name!r} is not a timm model")
    kwargs = arch.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise _fail(source, f"{key}.kwargs", "must be an object")
    for k, v in kwargs.items():
        where = f"{key}.kwargs.{k}"
        if k in _SHAPE_INTS:
            _ints(v, source, where, _SHAPE_INTS[k])
        elif k in _SHAPE_FLOATS:
            if v is not None:
                _number(v, source, where, _SHAPE_FLOATS[k])
        elif k in _SHAPE_BOOLS:
            if not isinstance(v, bool) and v is not None:
                raise _fail(source, where, f"{v!r} must be true or false")
        elif k in _SHAPE_CHOICES:
            if v not in _SHAPE_CHOICES[k]:
                raise _fail(source, where, f"{v!r} is not one of {sorted(_SHAPE_CHOICES[k])}")
        elif k in _DROP_RATES:
            _number(v, source, where, 0.99)
        elif k in ("num_classes", "pretrained"):
            continue  # the hub always sets these itself
        else:
            reason = "names a file, URL or weight source" if re.search(r"pretrain|path|file|url|cache|hub", k) \
                else "is not a shape-describing architecture argument"
            raise _fail(source, where, f"{reason}; allowed: {sorted(SHAPE_KWARGS | _DROP_RATES)}")
    return {"name": name, "kwargs": {k: v for k, v in kwargs.items() if k not in ("num_classes", "pretrained")}}


def check_preprocessing(pre: Any, source: str, video: bool = False) -> None:
    """Finite numbers, 3-channel mean/std with ``std > 0``, sizes within limits."""
    if not isinstance(pre, Mapping):
        raise _fail(source, "preprocessing", f"must be an object, got {type(pre).__name__}")
    _int(pre.get("image_size"), source, "preprocessing.image_size", 4096)
    for key in ("mean", "std"):
        values = pre.get(key)
        if not isinstance(values, list | tuple) or len(values) != 3:
            raise _fail(source, f"preprocessing.{key}", f"{values!r} must be 3 numbers (RGB)")
        for i, v in enumerate(values):
            _number(v, source, f"preprocessing.{key}[{i}]", 1e3, low=-1e3)
            if key == "std" and v <= 0:
                raise _fail(source, f"preprocessing.std[{i}]", f"{v!r} must be > 0 (it divides the pixels)")
    if "crop_pct" in pre and not _number(pre["crop_pct"], source, "preprocessing.crop_pct", 1.0) > 0:
        raise _fail(source, "preprocessing.crop_pct", "must be in (0, 1]")
    if "interpolation" in pre and pre["interpolation"] not in _INTERPOLATIONS:
        raise _fail(source, "preprocessing.interpolation", f"{pre['interpolation']!r} not in {sorted(_INTERPOLATIONS)}")
    if video:
        _int(pre.get("num_frames"), source, "preprocessing.num_frames", 1024)
        _int(pre.get("max_text_len"), source, "preprocessing.max_text_len", 1 << 16)


def _check_video_architecture(arch: Any, source: str) -> None:
    if not isinstance(arch, Mapping) or set(arch) != {"frame_encoder", "text_encoder", "fusion"}:
        shown = sorted(arch) if isinstance(arch, Mapping) else type(arch).__name__
        raise _fail(source, "architecture", f"a video model needs frame_encoder, text_encoder and fusion, got {shown}")
    check_architecture(arch["frame_encoder"], source, "architecture.frame_encoder")
    text = arch["text_encoder"]
    from transformers import CONFIG_MAPPING

    if not isinstance(text, Mapping) or text.get("model_type") not in CONFIG_MAPPING:
        raise _fail(source, "architecture.text_encoder.model_type", "must name a built-in transformers model type")
    for key in _TEXT_REFUSED:
        if text.get(key):
            raise _fail(source, f"architecture.text_encoder.{key}", "would run or fetch code; refused")
    for key, limit in _TEXT_LIMITS.items():
        if key in text:
            _int(text[key], source, f"architecture.text_encoder.{key}", limit)
    fusion = arch["fusion"]
    if not isinstance(fusion, Mapping):
        raise _fail(source, "architecture.fusion", "must be an object")
    unknown = set(fusion) - set(_FUSION_LIMITS) - set(_FUSION_CHOICES) - {"visual_grid", "mlp_ratio", "dropout",
                                                                            "temperature"}
    if unknown:
        raise _fail(source, "architecture.fusion", f"unknown keys {sorted(unknown)}")
    for key, limit in _FUSION_LIMITS.items():
        if key in fusion:
            _int(fusion[key], source, f"architecture.fusion.{key}", limit)
    if "visual_grid" in fusion:
        _ints(fusion["visual_grid"], source, "architecture.fusion.visual_grid", 256)
    if "mlp_ratio" in fusion:
        _number(fusion["mlp_ratio"], source, "architecture.fusion.mlp_ratio", 64.0)
    if "dropout" in fusion:
        _number(fusion["dropout"], source, "architecture.fusion.dropout", 0.99)
    if "temperature" in fusion:
        _number(fusion["temperature"], source, "architecture.fusion.temperature", 1.0)
    for key, choices in _FUSION_CHOICES.items():
        if key in fusion and fusion[key] not in choices:
            raise _fail(source, f"architecture.fusion.{key}", f"{fusion[key]!r} is not one of {choices}")


def validate_config(config: Any, source: str) -> dict[str, Any]:
    """The config of a loaded checkpoint, held to the schema; returns it with the architecture normalised.

    Raises:
        CheckpointConfigError: not a JSON object, a missing key, a kwarg that does not describe shape, a size beyond the
            limits, a non-finite or zero-std preprocessing number; the message names ``source`` and the key.
    """
    if not isinstance(config, Mapping):
        kind = type(config).__name__
        raise CheckpointConfigError(f"{source}: the checkpoint config must be a JSON object, got {kind}")
    missing = [k for k in ("architecture", "preprocessing") if k not in config]
    if missing:
        raise CheckpointConfigError(f"{source}: the checkpoint config lacks {missing} (keys present: {sorted(config)})")
    out = dict(config)
    video = config.get("kind") == "video"
    if "kind" in config and not video:
        raise _fail(source, "kind", f"{config['kind']!r} is not 'video' (image configs carry no kind)")
    if video:
        _check_video_architecture(config["architecture"], source)
    else:
        out["architecture"] = check_architecture(config["architecture"], source)
    check_preprocessing(config["preprocessing"], source, video=video)
    return out


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """The model ``build`` makes, on the ``meta`` device: every shape, no memory, no initialisation."""
    with torch.device("meta"):
        return build()


def plain_json(value: Any, source: str, path: str = "training") -> Any:
    """``value`` as JSON-ready data; a container met again is written as ``"<same as PATH>"``, not expanded.

    ``json.loads(json.dumps(...))`` would copy a shared sub-object once per reference, which doubles with each
    level of sharing; here the work and the output grow with the number of distinct objects.

    Raises:
        CheckpointConfigError: a container holds itself (directly or further down), naming the file and the key.
    """
    seen: dict[int, str] = {}
    active: set[int] = set()

    def walk(item: Any, where: str) -> Any:
        if item is None or isinstance(item, bool | int | str):
            return item
        if isinstance(item, float):
            return item if math.isfinite(item) else str(item)
        if not isinstance(item, Mapping | list | tuple | set | frozenset):
            return str(item)
        ident = id(item)
        if ident in active:
            raise CheckpointConfigError(f"{source}: hyper-parameter {where!r} refers to itself (a reference cycle)")
        if ident in seen:
            return f"<same as {seen[ident]}>"
        seen[ident] = where
        active.add(ident)
        try:
            if isinstance(item, Mapping):
                return {str(k): walk(v, f"{where}.{k}") for k, v in item.items()}
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(item)]
        finally:
            active.discard(ident)

    try:
        return walk(value, path)
    except RecursionError as e:
        raise CheckpointConfigError(f"{source}: hyper-parameters under {path!r} are nested too deeply to store") from e
