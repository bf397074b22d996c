"""Video–text samples from WebDataset shards in the layout video2dataset writes, and manifests turned into shards.

A sample is ``{key}.mp4`` (or another container: ``VIDEO_KEYS``), ``{key}.txt`` (the caption, used as the title)
and ``{key}.json`` (metadata: ``caption``, and ``ocr`` / ``tags`` / ``label`` / ``title`` when present). The video
bytes go through the same decoding as files (`decode_clip`: decord, PyAV fallback, truncation checks), in memory.
Splitting over ranks and workers, epochs and bad-sample accounting are `mmpretrain.data.shards`'.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmpretrain.data.shards import SampleError, sample_json, shard_name
from mmpretrain.video.io.dataset import ClipReader, SampleVocab
from mmpretrain.video.io.decoding import VideoDecodeError
from mmpretrain.video.io.manifest import VideoRecord, read_video_manifest

VIDEO_KEYS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v for v in value if v.strip())
    raise SampleError("corrupt_member", f"{where}.json: '{key}' must be a string or a list of strings")


def video_member(raw: dict[str, Any]) -> tuple[str, bytes]:
    """(extension, bytes) of the sample's video; `SampleError` ``missing_video`` when it has none."""
    ext = next((e for e in VIDEO_KEYS if e in raw), None)
    if ext is None:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise SampleError("missing_video", f"{raw['__key__']} has no {'/'.join(VIDEO_KEYS)} member ({members})")
    return ext, raw[ext]


def shard_record(raw: dict[str, Any]) -> VideoRecord:
    """The sample as a manifest record: id = key, video = ``shard/key.ext``, title from ``.txt`` (else the json's
    ``title`` or ``caption``), OCR, tags and label from the ``.json``."""
    key = raw["__key__"]
    ext, _ = video_member(raw)
    meta = sample_json(raw)
    title = raw["txt"].decode("utf-8", errors="replace").strip() if "txt" in raw else None
    title = title or meta.get("title") or meta.get("caption")
    if title is not None and not isinstance(title, str):
        raise SampleError("corrupt_member", f"{key}.json: 'caption' must be a string")
    label = meta.get("label")
    return VideoRecord(
        id=key,
        video=f"{shard_name(raw.get('__url__', ''))}/{key}.{ext}",
        title=title or None,
        ocr=_strings(meta.get("ocr"), "ocr", key),
        label=None if label is None else str(label),
        tags=_strings(meta.get("tags"), "tags", key),
        line=0,
    )


class VideoShardDecoder:
    """Raw shard sample -> the sample `VideoTextDataset` gives; picklable for DataLoader workers.

    Randomness (frames, crop) is seeded by (seed, epoch, key), so a resumed epoch draws the same clips.
    ``require_caption``: a sample without a caption is skipped as ``missing_caption`` (pretraining needs the text).
    """

    def __init__(self, reader: ClipReader, vocab: SampleVocab, seed: int = 0, require_caption: bool = True) -> None:
        self.reader = reader
        self.vocab = vocab
        self.seed = seed
        self.epoch = 0
        self.require_caption = require_caption

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        record = shard_record(raw)
        if self.require_caption and not record.title:
            raise SampleError("missing_caption", f"{record.id} has no .txt and no 'caption' in its .json")
        try:
            self.vocab.check(record)
        except ValueError as err:
            raise SampleError("unknown_label", f"{record.id}: label {record.label!r} is not in the class list") from err
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(record.id.encode("utf-8"))])
        _, data = video_member(raw)
        try:
            clip = self.reader(data, rng, name=record.video)
        except VideoDecodeError as err:
            raise SampleError(err.reason, str(err)) from err
        sample = self.vocab.sample(record, clip)
        sample["index"] = -1
        return sample


def manifest_samples(manifest: str | Path) -> Iterator[dict[str, Any]]:
    """A video manifest as shard samples in video2dataset's layout (what `VideoShardDecoder` reads back).

    The key is the record's id with dots replaced (WebDataset splits a member name at its first dot).
    """
    for record in read_video_manifest(manifest):
        ext = Path(record.video).suffix.lstrip(".").lower() or "mp4"
        meta: dict[str, Any] = {"caption": record.title, "ocr": list(record.ocr) or None, "label": record.label,
                                "tags": list(record.tags) or None}
        sample: dict[str, Any] = {"__key__": record.id.replace(".", "_"),
                                  ext: Path(record.video).read_bytes(),
                                  "json": json.dumps({k: v for k, v in meta.items() if v is not None})}
        if record.title:
            sample["txt"] = record.title
        yield sample

