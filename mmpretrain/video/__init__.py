"""Video–title–OCR pretraining in three rooms: :mod:`~mmpretrain.video.io` (decoding, sampling, manifests, shards,
frames, datasets: all the file reading), :mod:`~mmpretrain.video.train` (text, masking, objectives, parameter groups
and the thin LightningModules) and :mod:`~mmpretrain.video.eval` (metrics, fine-tuning tasks, retrieval evaluation,
the store probe); :mod:`~mmpretrain.video.demo` writes the synthetic demo clips. The fusion model itself is pure
model code in :mod:`mmpretrain.models.fusion`, so the hub rebuilds it without importing this room.

Example:
    >>> from mmpretrain.video import make_sampler
    >>> make_sampler(4, mode="segment", train=False, rng=None)(16).tolist()
    [2, 6, 10, 14]
"""

from mmpretrain.video._lazy import lazy_exports

# The public names, each with the subpackage that exports it: imported on first use, so decoding and the demo
# generator do not pay for Lightning and transformers.
_IO = ("BACKENDS", "VIDEO_EXTENSIONS", "VideoDecodeError", "VideoInfo", "decode_clip", "probe_video", "make_sampler",
       "segment_indices",
       "stride_indices", "VideoRecord", "label_vocab", "read_video_manifest", "tag_vocab", "write_video_manifest",
       "video_input", "shard_record", "video_member",
       "FrameShards", "prepare_frames", "VideoTextDataset", "collate_videos", "VideoCollator", "VideoDataModule")
_TRAIN = ("TextProcessor", "join_ocr", "VideoFusionPretrain", "VideoFinetune", "build_finetune", "build_pretrain",
          "write_predictions")
_EVAL = ("video_text_retrieval", "linear_probe", "probe_store")
_LAZY = {name: room for room, names in (("io", _IO), ("train", _TRAIN), ("eval", _EVAL)) for name in names}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
