"""Encoders: a checkpoint's backbone plus its own preprocessing, behind one small ``encode_*`` interface.

Preprocessing is split in two so it is cheap where it runs: :class:`ImageTransform` (resize and centre crop on the
CPU, in DataLoader workers during extraction) yields uint8 pixels, and :meth:`ImageEncoder.embed` turns a uint8 batch
into normalised floats on the model's device, where it is one fused, vectorised step. Paths, PIL images and uint8
arrays all pass through the same PIL resize, so one image gives one row whatever form it arrives in.

Every encoder answers the same few calls, the :class:`Encoder` protocol (timm's habit: one interface, many models):
``name``, ``kind``, ``embed_dim``, ``preprocessing``, ``settings()``, ``weights_sha256()``, ``batch_loader()`` and
``embed_batch()``. Extraction and search use only these, so they never ask which class an encoder is.
"""


from mmpretrain.encoders.base import (
    ENCODER_KINDS,
    PRECISIONS,
    Encoder,
    InputLoader,
    default_device,
    weights_sha256,
)
from mmpretrain.encoders.image import ImageEncoder, ImageFileLoader, ImageTransform
from mmpretrain.encoders.load import load_encoder
from mmpretrain.encoders.video import VideoClipLoader, VideoEncoder

__all__ = [
    "ENCODER_KINDS", "PRECISIONS", "Encoder", "ImageEncoder", "ImageFileLoader", "ImageTransform", "InputLoader",
    "VideoClipLoader", "VideoEncoder", "default_device", "load_encoder", "weights_sha256",
]
