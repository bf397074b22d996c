"""Shared fixtures: a tiny Swin config and a small demo image set, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_SWIN = {
    "backbone": "swin_tiny_patch4_window7_224",
    "backbone_kwargs": {
        "img_size": 32,
        "embed_dim": 24,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 2,
    },
    "image_size": 32,
}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmpretrain.data import make_demo_images

    return make_demo_images(tmp_path_factory.mktemp("demo"), num_classes=4, train_per_class=12, val_per_class=4, size=32)
