"""Video–title–OCR pretraining: decoding (decord, PyAV fallback), sampling, manifests, the fusion model, its
objectives (MVM, MTM, VTM, VTC), the LightningModules and the downstream metrics.

Rooms: :mod:`~mmpretrain.video.decoding`, :mod:`~mmpretrain.video.sampling`, :mod:`~mmpretrain.video.manifest`,
:mod:`~mmpretrain.video.dataset`, :mod:`~mmpretrain.video.frames` (pre-extracted frame shards) and
:mod:`~mmpretrain.video.datamodule` do the I/O; :mod:`~mmpretrain.video.text`, :mod:`~mmpretrain.video.masking`,
:mod:`~mmpretrain.video.losses`, :mod:`~mmpretrain.video.model` and :mod:`~mmpretrain.video.metrics` are pure
torch/numpy; :mod:`~mmpretrain.video.module` is the thin LightningModule.
"""

from mmpretrain.video.datamodule import VideoCollator, VideoDataModule
from mmpretrain.video.dataset import VideoTextDataset, collate_videos
from mmpretrain.video.decoding import BACKENDS, VideoDecodeError, VideoInfo, decode_clip, probe_video
from mmpretrain.video.frames import FrameShards, prepare_frames
from mmpretrain.video.manifest import VideoRecord, label_vocab, read_video_manifest, tag_vocab, write_video_manifest
from mmpretrain.video.model import VideoTextFusion, build_video_model
from mmpretrain.video.module import VideoFusionPretrain
from mmpretrain.video.sampling import make_sampler, segment_indices, stride_indices
from mmpretrain.video.text import TextProcessor, join_ocr

__all__ = [
    "BACKENDS",
    "FrameShards",
    "TextProcessor",
    "VideoCollator",
    "VideoDataModule",
    "VideoDecodeError",
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
    "make_sampler",
    "prepare_frames",
    "probe_video",
    "read_video_manifest",
    "segment_indices",
    "stride_indices",
    "tag_vocab",
    "write_video_manifest",
]
