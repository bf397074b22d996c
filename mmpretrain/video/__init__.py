"""Video–title–OCR pretraining: decoding (decord, PyAV fallback), sampling, manifests, the fusion model, its
objectives (MVM, MTM, VTM, VTC), the LightningModules and the downstream metrics.

Rooms: :mod:`~mmpretrain.video.decoding`, :mod:`~mmpretrain.video.sampling`, :mod:`~mmpretrain.video.manifest`,
:mod:`~mmpretrain.video.dataset`, :mod:`~mmpretrain.video.frames` (pre-extracted frame shards) and
:mod:`~mmpretrain.video.datamodule` do the I/O; :mod:`~mmpretrain.video.text`, :mod:`~mmpretrain.video.masking`,
:mod:`~mmpretrain.video.losses`, :mod:`~mmpretrain.video.model` and :mod:`~mmpretrain.video.metrics` are pure
torch/numpy; :mod:`~mmpretrain.video.module` is the thin LightningModule.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmpretrain.video.datamodule import VideoCollator, VideoDataModule
    from mmpretrain.video.dataset import VideoTextDataset, collate_videos
    from mmpretrain.video.decoding import BACKENDS, VideoDecodeError, VideoInfo, decode_clip, probe_video
    from mmpretrain.video.evaluation import video_text_retrieval
    from mmpretrain.video.finetune import VideoFinetune, write_predictions
    from mmpretrain.video.frames import FrameShards, prepare_frames
    from mmpretrain.video.manifest import (
        VideoRecord,
        label_vocab,
        read_video_manifest,
        tag_vocab,
        write_video_manifest,
    )
    from mmpretrain.video.model import VideoTextFusion, build_video_model
    from mmpretrain.video.module import VideoFusionPretrain
    from mmpretrain.video.probe import linear_probe, probe_store
    from mmpretrain.video.sampling import make_sampler, segment_indices, stride_indices
    from mmpretrain.video.text import TextProcessor, join_ocr

# Imported on first use: decoding and the demo generator should not pay for Lightning and transformers.
_LAZY = {
    "BACKENDS": "decoding",
    "FrameShards": "frames",
    "TextProcessor": "text",
    "VideoCollator": "datamodule",
    "VideoDataModule": "datamodule",
    "VideoDecodeError": "decoding",
    "VideoFinetune": "finetune",
    "VideoFusionPretrain": "module",
    "VideoInfo": "decoding",
    "VideoRecord": "manifest",
    "VideoTextDataset": "dataset",
    "VideoTextFusion": "model",
    "build_video_model": "model",
    "collate_videos": "dataset",
    "decode_clip": "decoding",
    "join_ocr": "text",
    "linear_probe": "probe",
    "probe_store": "probe",
    "video_text_retrieval": "evaluation",
    "write_predictions": "finetune",
    "label_vocab": "manifest",
    "make_sampler": "sampling",
    "prepare_frames": "frames",
    "probe_video": "decoding",
    "read_video_manifest": "manifest",
    "segment_indices": "sampling",
    "stride_indices": "sampling",
    "tag_vocab": "manifest",
    "write_video_manifest": "manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"mmpretrain.video.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmpretrain.video' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BACKENDS",
    "FrameShards",
    "TextProcessor",
    "VideoCollator",
    "VideoDataModule",
    "VideoDecodeError",
    "VideoFinetune",
    "VideoFusionPretrain",
    "VideoInfo",
    "VideoRecord",
    "VideoTextDataset",
    "VideoTextFusion",
    "build_video_model",
    "collate_videos",
    "decode_clip",
    "join_ocr",
    "label_vocab",
    "linear_probe",
    "make_sampler",
    "prepare_frames",
    "probe_store",
    "probe_video",
    "read_video_manifest",
    "segment_indices",
    "stride_indices",
    "tag_vocab",
    "video_text_retrieval",
    "write_predictions",
    "write_video_manifest",
]
