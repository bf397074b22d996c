"""Lazy public names for the video packages: a name is imported from its module on first use, so decoding and the
demo generator do not pay for Lightning and transformers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package`` serving ``table`` (name -> module relative to it).

    Example:
        >>> get, listing = lazy_exports("mmpretrain.video.io", {"make_sampler": "sampling"})
        >>> get("make_sampler").__name__
        'make_sampler'
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
