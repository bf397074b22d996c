"""``load_encoder``: any checkpoint source as the encoder its model calls for."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmpretrain.encoders.image import ImageEncoder
from mmpretrain.encoders.video import VideoEncoder
from mmpretrain.errors import ConfigError


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
        >>> import numpy as np
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
