"""Image encoders: a backbone plus its preprocessing (resize and crop on the CPU, normalisation on the device)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import functional as TF

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, load_rgb
from mmpretrain.encoders.base import _INTERPOLATIONS, _REQUIRED_PREPROCESSING, _batches, _EncoderBase, default_device
from mmpretrain.errors import ConfigError, DataError


class ImageTransform:
    """PIL image -> ``(3, size, size)`` uint8 tensor: resize the short side to ``size / crop_pct``, centre crop.

    The linear-evaluation test pipeline (Resize 256, CenterCrop 224 for ``crop_pct=0.875``) without the float
    conversion, which :meth:`ImageEncoder.embed` does batched on the device. Picklable, so DataLoader workers and
    DDP-spawned processes can use it.

    Args:
        image_size: side of the square crop fed to the model.
        crop_pct: crop fraction; the short side is first resized to ``round(image_size / crop_pct)``.
        interpolation: a torchvision ``InterpolationMode`` value (``bicubic``, ``bilinear``, ``nearest``, ...).
    """

    def __init__(self, image_size: int, crop_pct: float = 0.875, interpolation: str = "bicubic") -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"preprocessing.interpolation={interpolation!r} is not one of {sorted(_INTERPOLATIONS)}"
            )
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"preprocessing.crop_pct={crop_pct} must be in (0, 1]")
        self.image_size = int(image_size)
        self.resize_to = round(self.image_size / crop_pct)
        self.interpolation = _INTERPOLATIONS[interpolation]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = TF.resize(image.convert("RGB"), self.resize_to, interpolation=self.interpolation)
        image = TF.center_crop(image, [self.image_size, self.image_size])
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return (f"ImageTransform(resize={self.resize_to}, crop={self.image_size}, "
                f"interpolation={self.interpolation.value})")


class ImageFileLoader:
    """An image file (or a PIL image read from a shard) -> ``(3, size, size)`` uint8 pixels; picklable for workers.

    Files with more than ``max_pixels`` pixels (from the header) are refused before decoding.
    """

    def __init__(self, transform: ImageTransform, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.transform = transform
        self.max_pixels = max_pixels
        self.shape = (3, transform.image_size, transform.image_size)

    def __call__(self, item: str | os.PathLike | Image.Image, name: str | None = None) -> torch.Tensor:
        image = item if isinstance(item, Image.Image) else load_rgb(os.fspath(item), self.max_pixels)
        return self.transform(image)


def _as_pil(item: Any, index: int) -> Image.Image:
    """One input of ``encode_images`` as an RGB PIL image; errors name the item's position (and file)."""
    if isinstance(item, str | os.PathLike):
        try:
            return load_rgb(os.fspath(item))
        except Exception as err:  # PIL raises many exception types for bad files
            raise DataError(f"images[{index}]: cannot read image {os.fspath(item)!r}: "
                            f"{type(err).__name__}: {err}") from err
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise TypeError(f"images[{index}]: numpy arrays must be uint8 HWC, got dtype {item.dtype}")
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        if item.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(item), mode="L").convert("RGB")
        if item.ndim == 3 and item.shape[2] in (3, 4):
            image = Image.fromarray(np.ascontiguousarray(item), mode="RGB" if item.shape[2] == 3 else "RGBA")
            return image if image.mode == "RGB" else image.convert("RGB")
        raise ValueError(f"images[{index}]: numpy arrays must be HxWx3 (or HxWx1, HxWx4, HxW) uint8, "
                         f"got shape {item.shape}")
    hint = "; convert tensors with t.permute(1, 2, 0).numpy() as uint8" if isinstance(item, torch.Tensor) else ""
    raise TypeError(f"images[{index}]: expected a path, a PIL image or a uint8 HWC numpy array, "
                    f"got {type(item).__name__}{hint}")


class ImageEncoder(_EncoderBase):
    """A backbone with the preprocessing it was trained with; ``encode_images`` turns images into embeddings.

    The backbone is put in eval mode, frozen and moved to ``device`` in place (no copy of large weights).

    Args:
        backbone: a headless timm model (``num_classes=0``) returning pooled features.
        preprocessing: ``{"image_size", "mean", "std", "interpolation", "crop_pct"}`` from the checkpoint's config.
        name: the encoder's name, recorded in embedding stores for provenance.
        device: where the model runs; ``None`` picks CUDA when present, else the CPU.
        dtype: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast (outputs are always float32).
        channels_last: run the model on channels-last tensors (faster convolutions on recent GPUs and CPUs).
        random_init: the backbone is an untrained baseline; outputs (embedding stores) record it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        preprocessing: Mapping[str, Any],
        name: str,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        channels_last: bool = False,
        random_init: bool = False,
    ) -> None:
        missing = [key for key in _REQUIRED_PREPROCESSING if key not in preprocessing]
        if missing:
            raise KeyError(f"encoder {name!r}: preprocessing lacks {missing} (got {sorted(preprocessing)})")
        self.name, self.kind = name, "image"
        self._check_dtype(dtype)
        self.random_init = random_init
        self.preprocessing = dict(preprocessing)
        self.transform = ImageTransform(
            int(preprocessing["image_size"]),
            float(preprocessing.get("crop_pct", 0.875)),
            str(preprocessing.get("interpolation", "bicubic")),
        )
        self.mean = [float(x) for x in preprocessing["mean"]]
        self.std = [float(x) for x in preprocessing["std"]]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"encoder {name!r}: preprocessing mean and std need 3 values (RGB)")
        self.dtype = dtype
        self.channels_last = channels_last
        self.device = torch.device(device) if device is not None else default_device()
        self.backbone = backbone.eval().requires_grad_(False).to(self.device)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self._norm_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return (f"ImageEncoder({self.name!r}, embed_dim={self.embed_dim}, device={self.device}, dtype={self.dtype}, "
                f"channels_last={self.channels_last}, transform={self.transform})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_norm_cache"] = {}  # device tensors do not travel to spawned processes
        return state

    @property
    def embed_dim(self) -> int:
        """Width of the embeddings: the backbone's pooled feature size."""
        return int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)

    def settings(self) -> dict[str, Any]:
        """The compute precision: all besides weights and preprocessing that changes an image row."""
        return {"precision": self.dtype}

    def batch_loader(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageFileLoader:
        """Decode, resize and crop on the CPU (DataLoader workers); :meth:`embed` does the rest on the device."""
        return ImageFileLoader(self.transform, max_pixels)

    def embed_batch(self, pixels: torch.Tensor, titles: Sequence[str] | None = None,
                    ocr: Sequence[str] | None = None, normalize: bool = True) -> torch.Tensor:
        """:meth:`embed`; images have no text, so ``titles`` and ``ocr`` are not read."""
        return self.embed(pixels, normalize)

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._norm_cache:
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
            self._norm_cache[device] = (mean, std)
        return self._norm_cache[device]

    def embed(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Float32 embeddings of a ``(n, 3, size, size)`` uint8 batch already on the backbone's device.

        The float conversion and mean/std normalisation happen here, batched, rather than per image on the CPU:
        what :func:`torchvision.transforms.ToTensor` and ``Normalize`` compute, at a fraction of the cost.
        """
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"embed expects a (n, 3, H, W) uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")
        mean, std = self._mean_std(pixels.device)
        x = (pixels.float() / 255 - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(pixels.device):
            features = self.backbone(x)
        features = features.float()
        return F.normalize(features, dim=-1) if normalize else features

    def preprocess(self, images: Sequence[Any], start: int = 0) -> torch.Tensor:
        """A uint8 ``(n, 3, size, size)`` batch from paths, PIL images or uint8 arrays; errors name ``start + i``."""
        return torch.stack([self.transform(_as_pil(item, start + i)) for i, item in enumerate(images)])

    def encode_images(self, images: Sequence[Any], batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Embed images, one float32 row per input, in input order.

        Args:
            images: a sequence of file paths, PIL images and uint8 HWC numpy arrays (mixed is fine), or one uint8
                ``(n, H, W, 3)`` array.
            batch_size: images per forward pass.
            normalize: L2-normalise the rows (for cosine / inner-product search).

        Raises:
            TypeError / ValueError: an input of another type or shape, naming its index.
            DataError: an unreadable file, naming its index and path.
        """
        if isinstance(images, str | os.PathLike | Image.Image) or (isinstance(images, np.ndarray) and images.ndim < 4):
            raise TypeError(f"images must be a sequence of images, got a single {type(images).__name__}; "
                            "wrap it in a list")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        items = list(images)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        pending: tuple[int, torch.Tensor] | None = None
        with torch.inference_mode():
            for start, batch in _batches(items, batch_size):
                pixels = self.preprocess(batch, start).to(self.device, non_blocking=True)
                result = self.embed(pixels, normalize)
                # Copy the previous batch out only now: on a GPU the CPU resized this batch while it computed.
                if pending is not None:
                    out[pending[0]:pending[0] + len(pending[1])] = pending[1].cpu().numpy()
                pending = (start, result)
            if pending is not None:
                out[pending[0]:pending[0] + len(pending[1])] = pending[1].cpu().numpy()
        return out
