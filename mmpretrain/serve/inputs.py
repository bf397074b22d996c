"""Turning request bytes into model inputs, refusing bad ones with a :class:`RequestError` that names the problem.

Everything here runs in the preprocessing thread pool, never on the event loop or in the model worker: decoding a
large PNG or a video takes milliseconds to seconds, and the model must not wait for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mmpretrain.data import load_rgb
from mmpretrain.errors import MMPretrainError

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder, VideoEncoder

_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class RequestError(MMPretrainError, ValueError):
    """A request the service refuses: answered with ``status`` and ``{"error": message, "kind": kind}``.

    ``kind`` is a short fixed word (``undecodable_image``, ``too_many_pixels``...) counted in ``/metrics``.
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def from_base64(value: Any, what: str) -> bytes:
    """Bytes of a base64 string (a ``data:...;base64,`` prefix is allowed), or a 400 naming ``what``."""
    if not isinstance(value, str):
        raise RequestError(400, "bad_base64", f"{what}: expected a base64 string, got {type(value).__name__}")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, "bad_base64", f"{what}: not valid base64 ({err})") from None


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """An RGB image from encoded bytes, its pixel count checked from the header before decoding."""
    if not data:
        raise RequestError(400, "empty_image", f"{what}: empty file")
    try:
        return load_rgb(io.BytesIO(data), max_pixels)
    except MMPretrainError as err:  # the pixel cap, checked before decoding
        raise RequestError(413, "too_many_pixels", f"{what}: {_without_source(err)}") from None
    except Image.DecompressionBombError as err:
        raise RequestError(413, "too_many_pixels", f"{what}: {err}") from None
    except Exception as err:  # PIL raises many types for garbage and truncated files
        raise RequestError(400, "undecodable_image",
                           f"{what}: cannot decode image ({type(err).__name__}: {_without_source(err)})") from None


def _without_source(err: Exception) -> str:
    """The error's text with the in-memory buffer's repr (``<_io.BytesIO object at 0x...>``) said as "the upload"."""
    return _BUFFER_REPR.sub("the upload", str(err)).removeprefix("the upload: ")


def image_pixels(encoder: ImageEncoder, data: bytes, what: str, max_pixels: int) -> torch.Tensor:
    """A ``(3, size, size)`` uint8 tensor: decoded and resized exactly as ``encode_images`` does."""
    return encoder.preprocess([decode_image(data, what, max_pixels)])[0]


def check_texts(encoder: Any, texts: Any, what: str = "texts") -> list[str]:
    """Texts a video-text encoder can embed whole: a non-empty list of strings, none past its tokenizer length."""
    if not hasattr(encoder, "encode_texts"):
        raise RequestError(400, "no_text_encoder", f"{what}: encoder {encoder.name!r} embeds images only; text needs "
                                                   "a video-text encoder")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, "bad_texts", f"{what}: expected a list of strings")
    processor = encoder.processor
    room = processor.max_len - 2  # [CLS] text [SEP]
    for i, text in enumerate(texts):
        if not text.strip():
            raise RequestError(400, "empty_text", f"{what}[{i}] is empty")
        count = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if count > room:
            raise RequestError(400, "text_too_long", f"{what}[{i}] is {count} tokens; the encoder reads at most {room}")
    return texts


def video_clip(encoder: VideoEncoder, data: bytes, what: str) -> torch.Tensor:
    """A ``(T, 3, size, size)`` uint8 clip sampled as ``encode_videos`` samples it, from a video file's bytes."""
    if not data:
        raise RequestError(400, "empty_video", f"{what}: empty file")
    handle, path = tempfile.mkstemp(suffix=".video", prefix="mmpretrain-serve-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        try:
            return encoder.read_clip(path)
        except Exception as err:  # decord and PyAV raise their own types for broken files
            message = str(err).replace(path, "the uploaded file")
            raise RequestError(400, "undecodable_video", f"{what}: {message}") from None
    finally:
        os.unlink(path)


def as_vector(value: Any, dim: int) -> np.ndarray:
    """A ``(1, dim)`` float32 query from a JSON list of numbers, or a 400 naming the mismatch."""
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise RequestError(400, "bad_vector", "vector: expected a list of numbers") from None
    if vector.ndim != 1 or vector.shape[0] != dim:
        raise RequestError(400, "bad_vector", f"vector: expected {dim} numbers, got shape {list(vector.shape)}")
    if not np.isfinite(vector).all():
        raise RequestError(400, "bad_vector", "vector: holds NaN or infinity")
    return vector[None]


def check_count(items: Sequence[Any], what: str, limit: int) -> None:
    """Refuse an empty batch or one over the per-request limit."""
    if not items:
        raise RequestError(400, "empty_batch", f"{what}: the batch is empty")
    if len(items) > limit:
        raise RequestError(413, "too_many_items", f"{what}: {len(items)} items; at most {limit} per request "
                                                  "(max_items)")
