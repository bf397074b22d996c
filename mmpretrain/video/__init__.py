"""Video–title–OCR pretraining: decoding (decord, PyAV fallback), sampling, manifests, objectives (MVM, MTM, VTM,
VTC), the LightningModules and the downstream metrics. The fusion model itself is pure model code and lives in
:mod:`mmpretrain.models.fusion`, so the hub can rebuild it from a checkpoint without importing this room.

Rooms: :mod:`~mmpretrain.video.decoding`, :mod:`~mmpretrain.video.sampling`, :mod:`~mmpretrain.video.manifest`,
:mod:`~mmpretrain.video.dataset`, :mod:`~mmpretrain.video.frames` (pre-extracted frame shards) and
:mod:`~mmpretrain.video.datamodule` do the I/O; :mod:`~mmpretrain.video.text`, :mod:`~mmpretrain.video.masking`,
:mod:`~mmpretrain.video.losses`, :mod:`~mmpretrain.video.metrics` and :mod:`~mmpretrain.video.tasks` are pure
torch/numpy; :mod:`~mmpretrain.video.module` and :mod:`~mmpretrain.video.finetune` are the thin LightningModules;
:mod:`~mmpretrain.video.evaluation` and :mod:`~mmpretrain.video.store_probe` evaluate trained models and stores.
"""

import importlib
from typing import Any

# The public names, each with the module that defines it: imported on first use, so decoding and the demo
# generator do not pay for Lightning and transformers. This table is the only list of them.
_LAZY = {
    "BACKENDS": "decoding",
    "VIDEO_EXTENSIONS": "decoding",
    "VideoDecodeError": "decoding",
    "VideoInfo": "decoding",
    "decode_clip": "decoding",
    "probe_video": "decoding",
    "make_sampler": "sampling",
    "segment_indices": "sampling",
    "stride_indices": "sampling",
    "VideoRecord": "manifest",
    "label_vocab": "manifest",
    "read_video_manifest": "manifest",
    "tag_vocab": "manifest",
    "write_video_manifest": "manifest",
    "FrameShards": "frames",
    "prepare_frames": "frames",
    "TextProcessor": "text",
    "join_ocr": "text",
    "VideoTextDataset": "dataset",
    "collate_videos": "dataset",
    "VideoCollator": "datamodule",
    "VideoDataModule": "datamodule",
    "VideoFusionPretrain": "module",
    "VideoFinetune": "finetune",
    "write_predictions": "finetune",
    "video_text_retrieval": "evaluation",
    "linear_probe": "store_probe",
    "probe_store": "store_probe",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"mmpretrain.video.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmpretrain.video' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
