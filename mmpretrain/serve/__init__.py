"""An HTTP service in front of an encoder, an index and a few-shot classifier: embeddings, search, classification.

``mmpretrain-serve encoder=<source> [index=<dir>] [classifier=<dir>]`` runs it; from Python::

    from mmpretrain.serve import ServeConfig, serve
    serve(ServeConfig(encoder="model.ckpt", index="/data/idx", port=8000))

or mount the ASGI app yourself::

    from mmpretrain.serve import Service, create_app
    app = create_app(Service.load(ServeConfig(encoder="model.ckpt")))

Concurrent image requests share forward passes (dynamic batching, :class:`ModelWorker`); decoding runs in a thread
pool; every refusal is a 4xx with one line of JSON naming the problem. Names are imported on first use, so
``ServeConfig`` checks a command line before torch and FastAPI load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmpretrain.serve.config import ServeConfig

if TYPE_CHECKING:
    from mmpretrain.serve.app import create_app
    from mmpretrain.serve.batching import ModelWorker
    from mmpretrain.serve.inputs import RequestError
    from mmpretrain.serve.server import serve
    from mmpretrain.serve.service import Service

__all__ = ["ModelWorker", "RequestError", "ServeConfig", "Service", "create_app", "serve"]

_LAZY = {"create_app": "app", "ModelWorker": "batching", "RequestError": "inputs", "serve": "server",
         "Service": "service"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"mmpretrain.serve.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmpretrain.serve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
