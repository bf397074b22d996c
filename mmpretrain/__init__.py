"""mmpretrain: self-supervised pretraining of image and video encoders, and what to do with their embeddings.

``load_encoder`` and ``list_pretrained`` are imported on first use, so ``import mmpretrain`` stays fast and does not
pull in torch and timm for tools that only need the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "list_pretrained", "load_encoder"]

if TYPE_CHECKING:
    from mmpretrain.encoders import load_encoder
    from mmpretrain.hub import list_pretrained

_LAZY = {"load_encoder": "mmpretrain.encoders", "list_pretrained": "mmpretrain.hub"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmpretrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
