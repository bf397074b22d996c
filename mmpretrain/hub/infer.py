"""What a checkpoint without a config is: a registry entry matched by file name or sha256, or a Swin / ViT
architecture read from the weights' shapes, checked against the model it names before anything is built.

The official MoBY releases (`moby_swin_t_300ep_pretrained.pth`, `moby_deit_small_300ep_pretrained.pth`) and plain
timm state dicts carry no architecture; users have them as files, by path or URL. What the shapes cannot show:
a ViT's head count (qkv is `3·dim × dim` for any count; the usual 64-wide heads are assumed) and, in a timm-layout
Swin file without its `attn_mask` buffers and without a stage whose window timm shrank to its grid, the input size
(the usual `window · patch · 2^(stages-1)`, 224 for Swin-T, is assumed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from mmpretrain._io import sha256_file
from mmpretrain.hub.building import backbone_factory
from mmpretrain.hub.errors import HubError
from mmpretrain.hub.registry import RegistryEntry
from mmpretrain.hub.schema import on_meta
from mmpretrain.models import state_fits

#: timm model names whose defaults the inferred kwargs override
SWIN_BASE = "swin_tiny_patch4_window7_224"
VIT_BASE = "vit_small_patch16_224"


def match_registry(path: Path, entries: Mapping[str, RegistryEntry]) -> RegistryEntry | None:
    """The registry entry whose URL ends in this file's name, else the one with this file's sha256."""
    by_name = [e for e in entries.values() if Path(urlparse(e.url).path).name == path.name]
    if len(by_name) == 1:
        return by_name[0]
    with_hash = [e for e in entries.values() if e.sha256]
    if with_hash:
        digest = sha256_file(path)
        for entry in with_hash:
            if entry.sha256 == digest:
                return entry
    return None


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct integers fill the group of `pattern` over the keys."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _swin(state: Mapping[str, torch.Tensor], raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Swin kwargs from a timm-layout state dict (PatchMerging at the start of stages 1-3)."""
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    stages = _count(state, r"^layers\.(\d+)\.")
    depths = [_count(state, rf"^layers\.{i}\.blocks\.(\d+)\.") for i in range(stages)]
    tables = [state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(stages)]
    heads = [int(t.shape[1]) for t in tables]
    windows = [(math.isqrt(int(t.shape[0])) + 1) // 2 for t in tables]
    window = max(windows)
    hidden = state["layers.0.blocks.0.mlp.fc1.weight"].shape[0]
    # timm shrinks the window of a stage whose grid is smaller than it to that grid: such a stage shows the size
    clamped = next((i for i, w in enumerate(windows) if w < window), None)
    img_size = windows[clamped] * patch * 2**clamped if clamped is not None else window * patch * 2 ** (stages - 1)
    for key, mask in (raw or {}).items():  # (windows, tokens, tokens): stage i's grid is window·√windows a side
        found = re.match(r"^encoder\.layers\.(\d+)\.blocks\.\d+\.attn_mask$", key)
        if found and isinstance(mask, torch.Tensor) and mask.ndim == 3:
            img_size = window * math.isqrt(int(mask.shape[0])) * patch * 2 ** int(found.group(1))
            break
    return {"embed_dim": int(embed_dim), "depths": depths, "num_heads": heads, "window_size": window,
            "patch_size": int(patch), "img_size": int(img_size), "mlp_ratio": hidden / embed_dim}


def _vit(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ViT / DeiT kwargs from a timm-layout state dict."""
    embed_dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    prefix = sum(key in state for key in ("cls_token", "dist_token"))
    grid = math.isqrt(int(state["pos_embed"].shape[1]) - prefix)
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    return {"embed_dim": int(embed_dim), "depth": _count(state, r"^blocks\.(\d+)\."),
            "num_heads": max(1, int(embed_dim) // 64), "patch_size": int(patch), "img_size": int(grid * patch),
            "mlp_ratio": hidden / embed_dim, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
            "class_token": "cls_token" in state}


def infer_architecture(
    state: Mapping[str, torch.Tensor], source: str, raw: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`{"name", "kwargs"}` of the Swin or ViT whose timm-layout weights `state` are, checked to fit them exactly.

    Args:
        state: backbone weights in timm layout (official MoBY files after :func:`convert_moby_official`).
        source: what to name in errors.
        raw: the original file's `model` dict, whose buffers (Swin's `attn_mask`) show the input size.

    Raises:
        HubError: neither a Swin nor a ViT, or an inferred model whose keys or shapes differ from the weights.
    """
    if "layers.0.blocks.0.attn.relative_position_bias_table" in state:
        arch = {"name": SWIN_BASE, "kwargs": _swin(state, raw)}
    elif "pos_embed" in state and "blocks.0.attn.qkv.weight" in state:
        arch = {"name": VIT_BASE, "kwargs": _vit(state)}
    else:
        raise HubError(f"{source}: carries no architecture and its weights are neither a Swin nor a ViT; pass "
                       "architecture='<timm name>' (mmpretrain-hub convert --arch) or load it by a registry name")
    _refuse_misfit(arch, state, source)
    return arch


def _refuse_misfit(arch: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise unless a headless `arch` has exactly the keys and shapes of `state` (built on the meta device: free)."""
    problem = state_fits(on_meta(backbone_factory(arch["name"], arch["kwargs"])), state,
                         ignore=lambda key: key.startswith("head."))
    if problem:
        raise HubError(f"{source}: the architecture read from its weights ({arch['name']} {arch['kwargs']}) does not "
                       f"fit them: {problem}; pass architecture='<timm name>'")
