"""Video encoders: the video–text fusion model behind ``encode_videos`` / ``encode_texts`` / ``match_scores``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS
from mmpretrain.data.transforms import FrameNormalize
from mmpretrain.encoders.base import _batches, _EncoderBase, default_device
from mmpretrain.errors import ConfigError, DataError


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
                raise DataError(f"videos[{index}]: {err}") from err
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
            DataError: an unreadable video, naming its index and file. ValueError: titles/OCR of another length.
        """
        if isinstance(paths, str | os.PathLike):
            raise TypeError("paths must be a sequence of videos; wrap a single path in a list")
        items = list(paths)
        titles = [None] * len(items) if titles is None else list(titles)
        ocr = [None] * len(items) if ocr is None else list(ocr)
        if len(titles) != len(items) or len(ocr) != len(items):
            raise ValueError(f"{len(items)} videos but {len(titles)} titles and {len(ocr)} OCR entries")
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
            raise ValueError(f"{len(items)} texts but {len(ocr)} OCR entries")
        out = np.empty((len(items), self.model.embed_dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.inference_mode(), self._autocast(device):
            for start, batch in _batches(items, batch_size):
                pairs = self.processor(batch, ocr[start:start + len(batch)])
                text = {k: v.to(device) for k, v in pairs.items()}
                emb = self.model.encode_text(text, normalize=normalize).float()
                out[start:start + len(batch)] = emb.cpu().numpy()
        return out

    def match_scores(self, clips: torch.Tensor | Sequence[Any], texts: Sequence[str],
                     ocr: Sequence[Any] | None = None) -> np.ndarray:
        """VTM match probabilities of ``(clip i, text i)`` pairs: the re-ranking score of a retrieval shortlist.

        ``clips`` is a uint8 clip batch (from :meth:`read_clip`) or the videos themselves, as :meth:`encode_videos`
        takes them (paths or file-like objects), one per text.
        """
        if not isinstance(clips, torch.Tensor):
            if isinstance(clips, str | os.PathLike):
                raise TypeError("clips must be a sequence of videos; wrap a single path in a list")
            clips = torch.stack([self.read_clip(item, i) for i, item in enumerate(clips)])
        if len(clips) != len(texts):
            raise ValueError(f"{len(clips)} clips but {len(texts)} texts: match_scores scores (clip i, text i) pairs")
        frames = self._frames(clips)
        text = self.processor(list(texts), list(ocr or [None] * len(texts)))
        text = {k: v.to(frames.device) for k, v in text.items()}
        with torch.inference_mode(), self._autocast(frames.device):
            return self.model.match(frames, text).cpu().numpy()
