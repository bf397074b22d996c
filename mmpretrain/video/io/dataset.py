"""Video clips with their title and OCR text; a video that fails to decode is counted and replaced, never blanked."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmpretrain.errors import ConfigError, DataError
from mmpretrain.video.io.decoding import BACKENDS, PYAV_MODES, VideoDecodeError, decode_clip
from mmpretrain.video.io.frames import FrameShards
from mmpretrain.video.io.manifest import VideoRecord
from mmpretrain.video.io.sampling import make_sampler

log = logging.getLogger(__name__)

# Training clips are decoded this much larger than `size` so a random resized crop keeps detail (ImageNet's 0.875).
CROP_PADDING = 0.875
_CROP_RATIO = (3 / 4, 4 / 3)


def _crop_box(height: int, width: int, scale: tuple[float, float], aspect: float, rng: np.random.Generator):
    """torchvision's RandomResizedCrop box (area fraction in `scale`, aspect within 3/4..4/3 of the target's),
    drawn from a numpy generator so the whole clip shares one box and the draw is seeded."""
    area = height * width
    low, high = math.log(_CROP_RATIO[0] * aspect), math.log(_CROP_RATIO[1] * aspect)
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(low, high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def _resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> uint8 (T, 3, *size), antialiased so downscaling does not alias."""
    if tuple(clip.shape[-2:]) == size:
        return clip
    out = F.interpolate(clip.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class VideoTextDataset(Dataset):
    """Clips of `num_frames` frames plus title and OCR text from manifest records.

    Training samples frames at random and takes one random resized crop for the whole clip (no horizontal flip:
    titles describe motion direction, "moving left"); evaluation takes the middle frame of each segment and
    resizes, deterministically. Randomness comes from (seed, epoch, index), so a resumed run draws the same clips;
    call `set_epoch` each epoch (with non-persistent workers, which copy the dataset afresh).

    A video that fails (`VideoDecodeError`) is logged with its reason and replaced by a seeded re-draw of another
    record, as `ImageDataset` does; each sample reports `failed` and `failed_reasons` so `DataHealthMonitor` can
    count failures across workers and abort past the configured rate.

    Args:
        records: manifest records (`read_video_manifest`).
        num_frames: frames per clip.
        size: output (height, width).
        train: random sampling and crop when True.
        sampling / stride: "segment" (TSN) or "stride" sampling (see `mmpretrain.video.io.sampling`).
        backend / pyav_mode: see `decode_clip`.
        frames_dir: read frames from pre-extracted shards (`prepare_frames`) instead of decoding videos.
        crop_scale: area range of the training crop; (1, 1) decodes straight at `size`.
        labels: class vocabulary; adds `label` (index, -1 for a record without one).
        tags: tag vocabulary; adds `tags` as a float multi-hot vector (tags outside it are ignored: tag
            vocabularies are often cut to the frequent ones).
        max_redraws: failures tolerated for one sample before raising.
        seed: base of all randomness.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        num_frames: int = 8,
        size: tuple[int, int] = (224, 224),
        train: bool = True,
        sampling: str = "segment",
        stride: int = 4,
        backend: str = "decord",
        pyav_mode: str = "auto",
        frames_dir: str | None = None,
        crop_scale: tuple[float, float] = (1.0, 1.0),
        labels: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        max_redraws: int = 10,
        seed: int = 0,
    ) -> None:
        if not records:
            raise ValueError("VideoTextDataset needs at least one record")
        self.reader = ClipReader(num_frames, size, train, sampling, stride, backend, pyav_mode, crop_scale)
        self.records = list(records)
        self.train = train
        self.max_redraws = max_redraws
        self.seed = seed
        self.epoch = 0
        self.vocab = SampleVocab(labels, tags)
        for r in self.records:
            self.vocab.check(r)
        self.frames = None if frames_dir is None else FrameShards(frames_dir)
        if self.frames is not None:
            absent = [r.id for r in self.records if not self.frames.knows(r.id)]
            if absent:
                raise DataError(
                    f"{len(absent)} videos of the manifest are not in frames directory {frames_dir} "
                    f"(first: {absent[:3]}); run python -m mmpretrain.cli.prepare_frames on this manifest"
                )

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the random clips and crops drawn for each index (called by the training loop every epoch)."""
        self.epoch = int(epoch)

    def _clip(self, record: VideoRecord, rng: np.random.Generator) -> torch.Tensor:
        stored = None if self.frames is None else self.frames.get(record.id)
        return self.reader(record.video, rng, stored=stored)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        candidate, reasons = index, []
        while True:
            record = self.records[candidate]
            try:
                clip = self._clip(record, rng)
                break
            except VideoDecodeError as err:
                reasons.append(err.reason)
                log.warning("skipping video %s (id %s): %s", record.video, record.id, err)
                if len(reasons) > self.max_redraws:
                    raise RuntimeError(
                        f"{len(reasons)} unreadable videos in a row while loading sample {index} (last: {record.video},"
                        f" {err.reason}); is the video folder mostly corrupt? (data.max_redraws={self.max_redraws})"
                    ) from err
                candidate = int(rng.integers(len(self.records)))
        sample = self.vocab.sample(record, clip)
        sample.update(index=candidate, failed=len(reasons), failed_reasons=",".join(reasons))
        return sample


class ClipReader:
    """Frames of one video -> a uint8 (T, 3, H, W) clip: sampling, decoding (file or bytes), crop, resize.

    Training samples frames at random and takes one random resized crop for the whole clip; evaluation takes the
    middle frame of each segment and resizes. The same reader serves manifests, frame shards and WebDataset shards.
    """

    def __init__(
        self,
        num_frames: int = 8,
        size: tuple[int, int] = (224, 224),
        train: bool = True,
        sampling: str = "segment",
        stride: int = 4,
        backend: str = "decord",
        pyav_mode: str = "auto",
        crop_scale: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        make_sampler(num_frames, mode=sampling, stride=stride, train=train, rng=None)  # validates mode and counts
        if backend not in BACKENDS:
            raise ConfigError(f"unknown data.backend '{backend}'; choose from {', '.join(BACKENDS)}")
        if pyav_mode not in PYAV_MODES:
            raise ConfigError(f"unknown data.pyav_mode '{pyav_mode}'; choose from {', '.join(PYAV_MODES)}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) with positive entries, got {size}")
        low, high = crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        self.num_frames = num_frames
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        self.sampling = sampling
        self.stride = stride
        self.backend = backend
        self.pyav_mode = pyav_mode
        self.crop_scale = (float(low), float(high))
        self.crop = train and self.crop_scale != (1.0, 1.0)
        self.decode_size = (
            (round(self.size[0] / CROP_PADDING), round(self.size[1] / CROP_PADDING)) if self.crop else self.size
        )

    def __call__(
        self, video: str | bytes, rng: np.random.Generator, name: str | None = None, stored: np.ndarray | None = None
    ) -> torch.Tensor:
        """`video` is a path or the bytes of a video (named `name` in errors); `stored` pre-extracted frames."""
        sample = make_sampler(self.num_frames, mode=self.sampling, stride=self.stride, train=self.train, rng=rng)
        if stored is not None:
            frames = np.ascontiguousarray(stored[sample(len(stored))])
        else:
            frames, _ = decode_clip(
                video, sample, size=self.decode_size, backend=self.backend, pyav_mode=self.pyav_mode, name=name
            )
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if self.crop:
            clip = _resize(clip, self.decode_size)
            top, left, h, w = _crop_box(*self.decode_size, self.crop_scale, self.size[1] / self.size[0], rng)
            clip = clip[:, :, top : top + h, left : left + w]
        return _resize(clip, self.size).contiguous()


class SampleVocab:
    """Class and tag vocabularies, and the text/label/tag fields of a sample built from a record."""

    def __init__(self, labels: Sequence[str] | None = None, tags: Sequence[str] | None = None) -> None:
        self.labels = None if labels is None else {name: i for i, name in enumerate(labels)}
        self.tags = None if tags is None else {name: i for i, name in enumerate(tags)}

    def check(self, record: VideoRecord) -> None:
        """Refuse a record whose label is outside the class list (a typo would silently become class -1)."""
        if self.labels is not None and record.label is not None and record.label not in self.labels:
            raise DataError(
                f"video '{record.id}' (manifest line {record.line}) has label '{record.label}', not in labels"
            )

    def sample(self, record: VideoRecord, clip: torch.Tensor) -> dict[str, Any]:
        sample: dict[str, Any] = {
            "frames": clip,
            "title": record.title or "",
            "ocr": " ".join(record.ocr),
            "label_name": record.label or "",  # what the clip shows, so VTM never uses a paraphrase as a negative
            "tag_set": list(record.tags),
            "id": record.id,
        }
        if self.labels is not None:
            sample["label"] = self.labels[record.label] if record.label is not None else -1
        if self.tags is not None:
            multi_hot = torch.zeros(len(self.tags), dtype=torch.float32)
            for tag in record.tags:
                if tag in self.tags:
                    multi_hot[self.tags[tag]] = 1.0
            sample["tags"] = multi_hot
        return sample


def collate_videos(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, turn numbers into tensors and keep strings as lists (tokenizers take lists)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool | int | float):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch
