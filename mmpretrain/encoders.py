"""Encoders: a checkpoint's backbone plus its own preprocessing, behind one small ``encode_*`` interface.

Preprocessing is split in two so it is cheap where it runs: :class:`ImageTransform` (resize and centre crop on the
CPU, in DataLoader workers during extraction) yields uint8 pixels, and :meth:`ImageEncoder.embed` turns a uint8 batch
into normalised floats on the model's device, where it is one fused, vectorised step. Paths, PIL images and uint8
arrays all pass through the same PIL resize, so one image gives one row whatever form it arrives in.

Every encoder answers the same few calls, the :class:`Encoder` protocol (timm's habit: one interface, many models):
``name``, ``kind``, ``embed_dim``, ``preprocessing``, ``settings()``, ``weights_sha256()``, ``batch_loader()`` and
``embed_batch()``. Extraction and search use only these, so they never ask which class an encoder is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, load_rgb
from mmpretrain.data.transforms import FrameNormalize
from mmpretrain.errors import ConfigError

__all__ = [
    "ENCODER_KINDS", "PRECISIONS", "Encoder", "ImageEncoder", "ImageFileLoader", "ImageTransform", "InputLoader",
    "VideoClipLoader", "VideoEncoder", "default_device", "load_encoder", "weights_sha256",
]

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
            raise ConfigError(f"images[{index}]: cannot read image {os.fspath(item)!r}: "
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
        raise ConfigError(f"images[{index}]: numpy arrays must be HxWx3 (or HxWx1, HxWx4, HxW) uint8, "
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
            raise ConfigError(f"embed expects a (n, 3, H, W) uint8 batch, got {tuple(pixels.shape)} {pixels.dtype}")
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
            TypeError / ValueError: an input of another type or shape, or an unreadable file, naming its index.
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


class VideoClipLoader:
    """Path -> ``(T, 3, size, size)`` uint8 clip sampled as in evaluation (segment middles); picklable for workers.

    Raises :class:`~mmpretrain.video.VideoDecodeError` (naming the file and the reason) for unreadable videos.
    """

    def __init__(self, num_frames: int, image_size: int, backend: str = "decord") -> None:
        self.num_frames, self.image_size, self.backend = int(num_frames), int(image_size), backend
        self.shape = (self.num_frames, 3, self.image_size, self.image_size)

    def __call__(self, path: str | os.PathLike | bytes, name: str | None = None) -> torch.Tensor:
        """A file, or a video's bytes (a shard sample, called ``name`` in errors)."""
        from mmpretrain.video.io.decoding import decode_clip
        from mmpretrain.video.io.sampling import make_sampler

        sampler = make_sampler(self.num_frames, mode="segment", train=False, rng=None)
        video = path if isinstance(path, bytes) else os.fspath(path)
        frames, _ = decode_clip(video, sampler, (self.image_size, self.image_size), self.backend, name=name)
        return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


class VideoEncoder(_EncoderBase):
    """A pretrained video–text model with its preprocessing: standalone video and text embeddings, VTM scores.

    ``encode_videos`` returns, by ``embedding``: ``"vtc"``, the contrastive embedding of the frames alone (the same
    space as ``encode_texts``; titles and OCR are ignored), or ``"fused"``, the fusion CLS over frames, title and
    OCR (a video without text is fused from its frames alone, as modality dropout trained it to be).
    Clips are sampled like evaluation in training: ``num_frames`` segment middles, resized at decode time.

    Args:
        model: a :class:`~mmpretrain.models.VideoTextFusion` with trained weights.
        config: the checkpoint's config (``preprocessing``, ``tokenizer``, ``embedding``).
        name: the encoder's name, recorded in embedding stores.
        device / dtype: as :class:`ImageEncoder`.
        embedding: ``"vtc"`` or ``"fused"``; default from the checkpoint's config.
        backend: video decoding backend (``decord`` with PyAV fallback, or ``pyav``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: Mapping[str, Any],
        name: str,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        embedding: str | None = None,
        backend: str = "decord",
    ) -> None:
        from mmpretrain.models import tokenizer_from_json
        from mmpretrain.video.train.text import TextProcessor

        self.name, self.kind = name, "video"
        self._check_dtype(dtype)
        self.embedding = embedding or config.get("embedding", "vtc")
        if self.embedding not in ("vtc", "fused"):
            raise ConfigError(f"encoder {name!r}: embedding={self.embedding!r} is not 'vtc' or 'fused'")
        pre = config["preprocessing"]
        self.dtype, self.backend = dtype, backend
        self.num_frames, self.image_size = int(pre["num_frames"]), int(pre["image_size"])
        self.preprocessing = dict(pre)
        self.processor = TextProcessor(tokenizer_from_json(config["tokenizer"]), int(pre.get("max_text_len", 64)))
        self.loader = VideoClipLoader(self.num_frames, self.image_size, backend)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.mean = [float(x) for x in pre["mean"]]
        self.std = [float(x) for x in pre["std"]]
        self.normalize = FrameNormalize(self.mean, self.std)

    def __repr__(self) -> str:
        return (f"VideoEncoder({self.name!r}, embedding={self.embedding}, embed_dim={self.embed_dim}, "
                f"frames={self.num_frames}x{self.image_size}px, device={self.device}, dtype={self.dtype})")

    @property
    def embed_dim(self) -> int:
        """Width of ``encode_videos`` rows: the VTC projection, or the fusion width for ``fused``."""
        return int(self.model.embed_dim if self.embedding == "vtc" else self.model.width)

    @property
    def backbone(self) -> nn.Module:
        """The whole video–text model: what Lightning moves between devices during extraction."""
        return self.model

    def settings(self) -> dict[str, Any]:
        """The compute precision and which embedding (``vtc`` or ``fused``) the rows are."""
        return {"precision": self.dtype, "embedding": self.embedding}

    def batch_loader(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VideoClipLoader:
        """The clip decoder (``max_pixels`` is an image limit: frames are resized at decode time)."""
        return self.loader

    def embed_batch(self, pixels: torch.Tensor, titles: Sequence[str] | None = None,
                    ocr: Sequence[str] | None = None, normalize: bool = True) -> torch.Tensor:
        """:meth:`embed` of a clip batch, with its titles and OCR tokenized for ``fused`` rows."""
        text, count = None, len(pixels)
        if self.embedding == "fused":
            text = self.processor(list(titles or [""] * count), list(ocr or [""] * count))
        return self.embed(pixels, text, normalize)

    def _frames(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, T, 3, H, W)`` -> normalized float on the model's device (which Lightning may have moved)."""
        device = next(self.model.parameters()).device
        return self.normalize.to(device)(clips.to(device))

    def read_clip(self, item: Any, index: int = 0) -> torch.Tensor:
        """One video (path, or uint8 ``(T, H, W, 3)`` frames) as a ``(T, 3, size, size)`` uint8 clip."""
        from mmpretrain.video.io.decoding import VideoDecodeError

        if isinstance(item, str | os.PathLike):
            try:
                return self.loader(item)
            except VideoDecodeError as err:
                raise ConfigError(f"videos[{index}]: {err}") from err
        if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 4 and item.shape[-1] == 3:
            clip = torch.from_numpy(np.ascontiguousarray(item)).permute(0, 3, 1, 2)
            if clip.shape[0] > self.num_frames:
                positions = np.linspace(0, clip.shape[0] - 1, self.num_frames).round().astype(int)
                clip = clip[torch.from_numpy(positions)]
            if clip.shape[-2:] != (self.image_size, self.image_size):
                clip = F.interpolate(clip.float(), size=(self.image_size,) * 2, mode="bilinear", antialias=True)
                clip = clip.round().clamp(0, 255).to(torch.uint8)
            return clip
        raise TypeError(f"videos[{index}]: expected a path or a uint8 (T, H, W, 3) array, got {type(item).__name__}")

    def embed(self, clips: torch.Tensor, text: Mapping[str, torch.Tensor] | None = None,
              normalize: bool = True) -> torch.Tensor:
        """Float32 embeddings of a ``(B, T, 3, H, W)`` uint8 batch on the model's device (text for ``fused``)."""
        frames = self._frames(clips)
        m = self.model
        with self._autocast(frames.device):
            if self.embedding == "vtc":
                out = m.encode_video(frames, normalize=False)
            else:
                out = m.encode_fused(frames, {k: v.to(frames.device) for k, v in text.items()})
        out = out.float()
        return F.normalize(out, dim=-1) if normalize else out

    def encode_videos(
        self,
        paths: Sequence[Any],
        titles: Sequence[str | None] | None = None,
        ocr: Sequence[str | Sequence[str] | None] | None = None,
        batch_size: int = 8,
        normalize: bool = True,
    ) -> np.ndarray:
        """One float32 row per video, in input order (see the class docstring for what the row is).

        Raises:
            ValueError: an unreadable video (naming its index and file) or titles/OCR of another length.
        """
        if isinstance(paths, str | os.PathLike):
            raise TypeError("paths must be a sequence of videos; wrap a single path in a list")
        items = list(paths)
        titles = [None] * len(items) if titles is None else list(titles)
        ocr = [None] * len(items) if ocr is None else list(ocr)
        if len(titles) != len(items) or len(ocr) != len(items):
            raise ConfigError(f"{len(items)} videos but {len(titles)} titles and {len(ocr)} OCR entries")
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
        with torch.inference_mode():
            for start, batch in _batches(items, batch_size):
                clips = torch.stack([self.read_clip(item, start + i) for i, item in enumerate(batch)])
                text = self.processor(titles[start:start + len(batch)], ocr[start:start + len(batch)])
                out[start:start + len(batch)] = self.embed(clips, text, normalize).cpu().numpy()
        return out

    def encode_texts(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        batch_size: int = 256,
        ocr: Sequence[str | Sequence[str] | None] | None = None,
    ) -> np.ndarray:
        """Text embeddings in the VTC space of ``encode_videos`` (the text encoder's states pooled as in training,
        projected).

        ``texts`` are titles or free queries; ``ocr`` optionally pairs each with OCR text, as in training.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings; wrap a single text in a list")
        items = list(texts)
        ocr = [None] * len(items) if ocr is None else list(ocr)
        if len(ocr) != len(items):
            raise ConfigError(f"{len(items)} texts but {len(ocr)} OCR entries")
        out = np.empty((len(items), self.model.embed_dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.inference_mode(), self._autocast(device):
            for start, batch in _batches(items, batch_size):
                pairs = self.processor(batch, ocr[start:start + len(batch)])
                text = {k: v.to(device) for k, v in pairs.items()}
                emb = self.model.encode_text(text, normalize=normalize).float()
                out[start:start + len(batch)] = emb.cpu().numpy()
        return out

    def match_scores(self, clips: torch.Tensor, texts: Sequence[str], ocr: Sequence[Any] | None = None) -> np.ndarray:
        """VTM match probabilities of ``(clip i, text i)`` pairs: the re-ranking score of a retrieval shortlist."""
        frames = self._frames(clips)
        text = self.processor(list(texts), list(ocr or [None] * len(texts)))
        text = {k: v.to(frames.device) for k, v in text.items()}
        with torch.inference_mode(), self._autocast(frames.device):
            return self.model.match(frames, text).cpu().numpy()


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


def load_encoder(
    name_or_path_or_url: str | Path,
    device: str | torch.device | None = None,
    *,
    dtype: str = "fp32",
    channels_last: bool = False,
    architecture: str | Mapping[str, Any] | None = None,
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    embedding: str | None = None,
    backend: str = "decord",
    random_init: bool = False,
) -> ImageEncoder | VideoEncoder:
    """An :class:`ImageEncoder` or :class:`VideoEncoder` from a registry name, URL, published folder/file or ``.ckpt``.

    Weights are downloaded once into the cache and sha256-verified, converted to timm layout and loaded strict
    (see :mod:`mmpretrain.hub`); the preprocessing comes from the checkpoint's config.

    Args:
        name_or_path_or_url: see :func:`mmpretrain.hub.load_checkpoint`.
        device: ``None`` picks CUDA when present, else the CPU.
        dtype: ``"fp32"`` or ``"bf16"`` (autocast).
        channels_last: channels-last memory format for the model and its inputs.
        architecture: timm name or ``{"name", "kwargs"}`` for files that carry no config (plain timm state dicts).
        registry: an extra registry file.
        cache_dir: download cache root.
        progress: show a download progress bar.
        embedding / backend: video models only: ``vtc`` or ``fused`` rows, and the decoding backend.
        random_init: image encoders: the same architecture at a seeded random init, the baseline a trained encoder
            is compared with (``timm:<model>`` then fetches nothing); its name and ``random_init`` say so.

    Example:
        A plain timm state dict needs ``architecture``; registry names, published models and training checkpoints
        carry theirs.

        >>> import tempfile
        >>> import timm
        >>> from PIL import Image
        >>> tiny = {"name": "vit_tiny_patch16_224",
        ...         "kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}}
        >>> folder = tempfile.TemporaryDirectory()
        >>> path = f"{folder.name}/tiny.pth"
        >>> torch.save(timm.create_model(tiny["name"], num_classes=0, **tiny["kwargs"]).state_dict(), path)
        >>> encoder = load_encoder(path, "cpu", architecture=tiny, progress=False)
        >>> rows = encoder.encode_images([Image.new("RGB", (48, 40), "white"), np.zeros((20, 20, 3), np.uint8)])
        >>> encoder.embed_dim, rows.shape, rows.dtype
        (32, (2, 32), dtype('float32'))
        >>> folder.cleanup()
    """
    from mmpretrain.hub import build_model, load_checkpoint

    loaded = load_checkpoint(name_or_path_or_url, architecture=architecture, registry=registry, cache_dir=cache_dir,
                             progress=progress, random_init=random_init)
    name = loaded.config.get("name") or str(name_or_path_or_url)
    if loaded.config.get("kind") == "video":
        if random_init:
            raise ConfigError(f"{name_or_path_or_url}: random_init=True loads image encoders only; a video model's "
                              "random baseline is mmpretrain-eval task=retrieval random_init=true")
        return VideoEncoder(build_model(loaded), loaded.config, name, device=device, dtype=dtype,
                            embedding=embedding, backend=backend)
    rebuild = random_init and not loaded.config.get("random_init")  # a random timm:<model> is random already
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = build_model(loaded, random_init=rebuild)
    if random_init and not name.endswith("(random init)"):
        name = f"{name} (random init)"
    return ImageEncoder(backbone, loaded.config["preprocessing"], name, device=device, dtype=dtype,
                        channels_last=channels_last, random_init=random_init)
