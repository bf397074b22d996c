"""Video input: decoding (decord, PyAV fallback), frame sampling, manifests, WebDataset shards, pre-extracted frame
shards, the dataset and the datamodule. Everything that reads a file lives here."""

from mmpretrain.video._lazy import lazy_exports

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
    "video_input": "manifest",
    "write_video_manifest": "manifest",
    "VideoShardDecoder": "shards",
    "manifest_samples": "shards",
    "shard_record": "shards",
    "video_member": "shards",
    "FrameShards": "frames",
    "prepare_frames": "frames",
    "ClipReader": "dataset",
    "SampleVocab": "dataset",
    "VideoTextDataset": "dataset",
    "collate_videos": "dataset",
    "VideoCollator": "datamodule",
    "VideoDataModule": "datamodule",
}

__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
