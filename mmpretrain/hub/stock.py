"""Stock timm backbones as baselines: `timm:<model>` through the same loading path as any checkpoint.

A user compares their MoBY encoder with a stock backbone by writing `encoder=timm:resnet50` where they would name a
checkpoint. The weights are timm's pretrained ones when they sit in the local Hugging Face cache (never fetched
here, so it works offline and in tests); otherwise the model is a seeded random init, and its name says so.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch

from mmpretrain.errors import ConfigError
from mmpretrain.hub.registry import DEFAULT_PREPROCESSING

log = logging.getLogger(__name__)

PREFIX = "timm:"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_stock(source: str) -> bool:
    """True for a `timm:<model>` name."""
    return str(source).startswith(PREFIX)


def cached_weights(hf_hub_id: str | None) -> Path | None:
    """The weights file of a Hugging Face repo in the local cache (HF_HUB_CACHE / HF_HOME), or None; no network."""
    if not hf_hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in _WEIGHT_FILES:
        found = try_to_load_from_cache(hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def load_stock(source: str, seed: int = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path | None]:
    """Config, headless weights and weights file (None: random init) of `timm:<model>`.

    Raises:
        ConfigError: timm has no such model (naming the closest ones).
    """
    import timm

    name = source[len(PREFIX) :]
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(f"encoder={source}: timm has no model {name!r}{hint}")
    with torch.device("meta"):
        pretrained_cfg = timm.create_model(name, pretrained=False, num_classes=0).pretrained_cfg
    weights = cached_weights(pretrained_cfg.get("hf_hub_id"))
    if weights is not None:
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)})
        label = f"{source} (timm pretrained, {pretrained_cfg.get('tag') or 'default'})"
        log.info("%s: timm's pretrained weights from the local cache (%s)", source, weights)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(name, pretrained=False, num_classes=0)
        label = f"{source} (random init)"
        log.warning("%s: timm's pretrained weights (%s) are not in the local cache: a seeded random init. Cache them "
                    "where there is network with timm.create_model(%r, pretrained=True)", source,
                    pretrained_cfg.get("hf_hub_id"), name)  # fmt: skip
    preprocessing = {
        **DEFAULT_PREPROCESSING,
        "image_size": int(pretrained_cfg.get("input_size", (3, DEFAULT_PREPROCESSING["image_size"]))[-1]),
        "mean": [float(x) for x in pretrained_cfg.get("mean", DEFAULT_PREPROCESSING["mean"])],
        "std": [float(x) for x in pretrained_cfg.get("std", DEFAULT_PREPROCESSING["std"])],
        "interpolation": str(pretrained_cfg.get("interpolation", DEFAULT_PREPROCESSING["interpolation"])),
        "crop_pct": float(pretrained_cfg.get("crop_pct", DEFAULT_PREPROCESSING["crop_pct"])),
    }
    config = {"name": label, "architecture": {"name": name, "kwargs": {}}, "preprocessing": preprocessing}
    return config, model.state_dict(), weights
