"""MoBY on a GPU: bf16 mixed precision through Lightning, SyncBN presets. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, tiny_overrides

from mmpretrain.cli.train import train


def test_presets_turn_heads_into_syncbn_only_on_gpus(tmp_path: Path) -> None:
    for preset, sync in (("gpu", True), ("ddp", True), ("ddp_sim", False), ("cpu", False)):
        cfg = compose_cfg("train.yaml", [f"trainer={preset}"], tmp_path)
        assert cfg.trainer.sync_batchnorm is sync, preset


@pytest.mark.gpu
def test_bf16_training_on_gpu(demo_root: Path, tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(demo_root) if o != "trainer=cpu"]
    cfg = compose_cfg("train.yaml", [*overrides, "trainer=gpu", "trainer.max_epochs=2"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"
    metrics, objects = train(cfg)
    model = objects["model"]
    assert objects["trainer"].strategy.root_device.type == "cuda"  # Lightning moves the model back to CPU after fit
    assert torch.isfinite(metrics["train/loss"]) and 0 <= float(metrics["val/knn_top1"]) <= 100
    assert int(model.queue1.ptr) == (objects["trainer"].global_step * 8) % 64
    assert model.queue1.keys.dtype == torch.float32
