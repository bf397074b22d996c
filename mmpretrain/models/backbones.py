"""One factory for image backbones: any timm model by name, without its classifier head."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from mmpretrain.errors import ConfigError

#: the normalization ImageNet-pretrained weights expect (timm's default): the one home of these numbers; data
#: transforms, modules and the hub's default preprocessing take them from here
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def create_backbone(
    name: str, drop_path_rate: float = 0.0, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Create a timm model that returns pooled features (`num_classes=0`).

    Args:
        name: any timm architecture name, e.g. ``swin_tiny_patch4_window7_224``.
        drop_path_rate: stochastic depth; MoBY uses 0.2 online and 0.0 for the momentum encoder.
        pretrained: load timm's own weights (needs the hub, so off by default).
        **kwargs: architecture overrides (img_size, embed_dim, depths, ...), passed to timm; a key set to ``None``
            is left to timm's default, so a recipe can drop a key it inherits (a ViT recipe built on a Swin one).

    Raises:
        ConfigError: the name is not a timm model; the message suggests close names.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean one of {close}?" if close else "; see timm.list_models()"
        raise ConfigError(f"unknown backbone '{name}' (model.backbone){hint}")
    return timm.create_model(name, pretrained=pretrained, num_classes=0, drop_path_rate=drop_path_rate,
                             **set_kwargs(kwargs))


def set_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Architecture kwargs without the keys set to ``None``: a recipe drops a key it inherits by nulling it (a ViT
    recipe on a Swin or ResNet one), and such a key is left to timm's default, never passed or saved."""
    return {key: value for key, value in (kwargs or {}).items() if value is not None}


def fixed_input_size(name: str | None) -> bool:
    """True for an architecture built for one input size (ViT, Swin: ``img_size`` sizes its position embedding or
    windows), False for one that takes any size (a CNN, which has no ``img_size`` argument)."""
    cfg = timm.get_pretrained_cfg(name) if name and timm.is_model(name) else None
    return bool(getattr(cfg, "fixed_input_size", True))


def backbone_has_batchnorm(model: nn.Module) -> bool:
    """True if any BatchNorm lives in the model: then views must be encoded separately to keep per-view stats."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
