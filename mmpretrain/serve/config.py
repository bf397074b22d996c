"""The service's settings: one dataclass, read from ``key=value`` words, with safe defaults and checked values."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mmpretrain.errors import ConfigError

#: A pixel cap far below training's 64 MP: a request's image only needs a thumbnail-sized crop.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class ServeConfig:
    """Everything ``mmpretrain-serve`` reads; every field is also a ``key=value`` word of the command.

    Attributes:
        encoder: any source :func:`mmpretrain.load_encoder` reads (registry name, path, URL, ``.ckpt``).
        index: a saved index folder (``mmpretrain-index build``) or an embedding store (searched exactly).
        classifier: a few-shot classifier folder (``mmpretrain.fewshot.load_classifier``).
        host / port: where to listen; loopback unless told otherwise (``port=0`` picks a free port).
        token: when set, every ``/v1`` route and ``/metrics`` need ``Authorization: Bearer <token>``.
        cors_origins: origins allowed to call from a browser; none (CORS off) by default.
        device: where the model runs (``None``: CUDA when present, else the CPU).
        max_batch / max_wait_ms: dynamic batching: a forward pass takes up to ``max_batch`` images, waiting at
            most ``max_wait_ms`` after the first for others to arrive.
        max_items: images or texts one request may carry.
        max_body_mb: largest request body; larger ones get 413 before they are read.
        max_pixels: largest decoded image (width x height), checked from the header before decoding.
        max_k: largest ``k`` of a search.
        read_timeout_s: a client must deliver each part of its body within this time (else 408).
        request_timeout_s: a request waiting longer than this for the model gets 503.
        preprocess_threads: threads that decode and resize images off the event loop and the model worker.
        shutdown_timeout_s: how long a shutdown waits for in-flight requests.
        thumbnail_px: side of the search page's thumbnails.
    """

    encoder: str = ""
    index: str | None = None
    classifier: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    device: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_items: int = 64
    max_body_mb: float = 32.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 1000
    read_timeout_s: float = 15.0
    request_timeout_s: float = 60.0
    preprocess_threads: int = 2
    shutdown_timeout_s: float = 30.0
    thumbnail_px: int = 160

    def __post_init__(self) -> None:
        self.token = self.token or None  # `token=` on a command line means no token, not an empty one
        if not self.encoder:
            raise ConfigError("encoder= is required: a registry name, a checkpoint path or a URL")
        positive = ("max_batch", "max_items", "max_body_mb", "max_pixels", "max_k", "read_timeout_s",
                    "request_timeout_s", "preprocess_threads", "shutdown_timeout_s", "thumbnail_px")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms={self.max_wait_ms} must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port={self.port} is not a TCP port (0-65535)")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @classmethod
    def from_args(cls, args: Sequence[str]) -> ServeConfig:
        """Parse ``key=value`` words (``cors_origins=[a,b]`` for lists, ``null`` for None); unknown keys are refused
        with the list of keys."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for arg in args:
            key, sep, raw = arg.partition("=")
            if not sep:
                raise ConfigError(f"{arg!r} is not key=value; keys: {', '.join(fields)}")
            if key not in fields:
                raise ConfigError(f"unknown key {key!r}; keys: {', '.join(fields)}")
            values[key] = _convert(key, raw, fields[key].type)
        return cls(**values)


def _convert(key: str, raw: str, annotation: Any) -> Any:
    """A word's value as its field's type, with an error naming the key."""
    kind = str(annotation)
    if raw in ("null", "None") and "None" in kind:
        return None
    try:
        if kind.startswith("list"):
            inner = raw.strip()
            inner = inner[1:-1] if inner.startswith("[") and inner.endswith("]") else inner
            return [part.strip().strip("'\"") for part in inner.split(",") if part.strip()]
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a {kind}") from None
    return raw
