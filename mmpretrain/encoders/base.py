"""The one interface every encoder answers (:class:`Encoder`), what encoders share, and the weights' fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torchvision.transforms import InterpolationMode

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS
from mmpretrain.errors import ConfigError

PRECISIONS = ("fp32", "bf16")
ENCODER_KINDS = ("image", "video")
_INTERPOLATIONS = {mode.value: mode for mode in InterpolationMode}
_REQUIRED_PREPROCESSING = ("image_size", "mean", "std")


def default_device() -> torch.device:
    """CUDA when present, else the CPU: what ``device=None`` means everywhere in this module."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@runtime_checkable
class InputLoader(Protocol):
    """One input (a file path, or what a shard holds: a PIL image, a video's bytes) -> the encoder's uint8 tensor.

    Picklable, so DataLoader workers can run it; ``shape`` is the tensor's shape (a failed input's zero placeholder).
    Raises on an input that does not decode; the caller records the error against that input.
    """

    shape: tuple[int, ...]

    def __call__(self, item: Any, name: str | None = None) -> torch.Tensor: ...


@runtime_checkable
class Encoder(Protocol):
    """What every encoder answers: all that extraction and search ask of one, whatever it embeds.

    Example:
        >>> def describe(encoder: Encoder) -> str:
        ...     return f"{encoder.name}: {encoder.kind} -> {encoder.embed_dim}-d"
    """

    name: str
    kind: str  # one of ENCODER_KINDS: the inputs it embeds
    preprocessing: dict[str, Any]  # from the checkpoint's config, recorded in every store it writes
    dtype: str  # compute precision, one of PRECISIONS

    @property
    def embed_dim(self) -> int:
        """Width of the rows ``embed_batch`` returns."""

    @property
    def backbone(self) -> nn.Module:
        """The module whose weights make the rows (what Lightning moves to a rank's device)."""

    def settings(self) -> dict[str, Any]:
        """Choices besides weights and preprocessing that change the rows (precision, video embedding kind)."""

    def weights_sha256(self) -> str:
        """Fingerprint of the weights, so a resumed run can tell it still has the same model."""

    def batch_loader(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> InputLoader:
        """The CPU side of preprocessing, for DataLoader workers."""

    def embed_batch(self, pixels: torch.Tensor, titles: Sequence[str] | None = None,
                    ocr: Sequence[str] | None = None, normalize: bool = True) -> torch.Tensor:
        """Float32 rows of a stacked batch of ``batch_loader`` outputs (text only where the encoder reads it)."""


class _EncoderBase:
    """What both encoders share: the precision check, autocast and the weights fingerprint."""

    name: str
    dtype: str
    backbone: nn.Module

    def _check_dtype(self, dtype: str) -> None:
        if dtype not in PRECISIONS:
            raise ConfigError(f"encoder {self.name!r}: dtype={dtype!r} is not one of {PRECISIONS}")

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for ``dtype="bf16"``, else nothing: one precision switch for every encoder."""
        if self.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def weights_sha256(self) -> str:
        """sha256 of the backbone's state (see :func:`weights_sha256`)."""
        return weights_sha256(self.backbone)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over a model's state (names, dtypes, shapes, bytes): what a resumed extraction checks it still has."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _batches(items: list[Any], batch_size: int) -> Iterator[tuple[int, list[Any]]]:
    for start in range(0, len(items), batch_size):
        yield start, items[start:start + batch_size]
