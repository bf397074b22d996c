"""Time in the tokens: the tubelet stem (shapes, zero start from a pretrained frame encoder, tube masks), the clean
title-only VTC text, checkpoints with and without the stem, and the objectives' ramp inside the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_video_pretrain import MINILM, fake_batch, tiny_module
from test_video_recipe import save_moby

from mmpretrain.encoders import load_encoder
from mmpretrain.hub import load_checkpoint
from mmpretrain.models import (
    FusionArch,
    build_video_model,
    create_backbone,
    create_tokenizer,
    encode_frame_grid,
    video_model_config,
)
from mmpretrain.video import TextProcessor, VideoFusionPretrain
from mmpretrain.video.train.masking import blockwise_mask
from mmpretrain.video.train.param_groups import video_param_groups

VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def processor() -> TextProcessor:
    return TextProcessor(create_tokenizer(MINILM), max_len=32)


def _frames(batch: int = 2, frames: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_tubelet_stem_shapes_and_learning_rate_group() -> None:
    module = tiny_module()
    m = module.model
    assert m.arch.temporal_stem == "tubelet" and m.temporal_stem is not None
    conv = m.temporal_stem.proj
    assert conv.kernel_size == (3, 8, 8) and conv.stride == (1, 8, 8) and conv.out_channels == 24
    frames = _frames()
    assert m.temporal_stem(frames).shape == (2, 4, 4, 4, 24)
    assert m.frame_grid(frames).shape == (2, 4, 4, 4, 24)
    assert m.video_tokens(frames).shape == (2, 4 * 16, 32)
    # fewer frames than the model takes: one token grid per frame still
    assert m.video_tokens(frames[:, :3]).shape == (2, 3 * 16, 32)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in video_param_groups(m, 1e-3, 0.05, {"frames": 0.5})}
    assert id(conv.weight) in groups["frames"] and id(conv.bias) in groups["frames/no_decay"]
    assert per_frame_tokens(m, frames).shape == m.frame_grid(frames).shape
    assert tiny_module(temporal_stem="per_frame").model.temporal_stem is None


def per_frame_tokens(model, frames: torch.Tensor) -> torch.Tensor:
    """The 2-D model's tokens: each frame through the image encoder alone."""
    return encode_frame_grid(model.frame_encoder, frames, model.visual_grid)


def test_pretrained_frames_start_with_a_zero_stem_that_still_learns(tmp_path: Path) -> None:
    save_moby(tmp_path / "moby.ckpt", "vit_tiny_patch16_224", VIT)
    module = tiny_module(frame_init=str(tmp_path / "moby.ckpt"))
    m = module.model.eval()
    still = _frames(frames=1).expand(-1, 4, -1, -1, -1).contiguous()  # identical frames
    with torch.no_grad():
        torch.testing.assert_close(m.frame_grid(still), per_frame_tokens(m, still), rtol=0, atol=0)
        moving = _frames(seed=1)
        torch.testing.assert_close(m.frame_grid(moving), per_frame_tokens(m, moving), rtol=0, atol=0)
    # the same checkpoint with the stem switched off gives the same tokens: step 0 is the image model
    plain = tiny_module(frame_init=str(tmp_path / "moby.ckpt"), temporal_stem="per_frame").model.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.frame_grid(moving), plain.frame_grid(moving))
    m.frame_grid(moving).square().sum().backward()
    assert m.temporal_stem.proj.weight.grad.abs().sum() > 0  # zero weights, a live gradient
    # a random frame encoder gets a random (not zero) stem: nothing to preserve
    assert tiny_module().model.temporal_stem.proj.weight.abs().sum() > 0


def test_tube_masked_cells_show_the_stem_nothing_of_their_content() -> None:
    torch.manual_seed(0)
    stem = tiny_module().model.temporal_stem
    mask = blockwise_mask(2, 4, 4, 4, 0.4, generator=torch.Generator().manual_seed(3), tube=True)
    assert (mask == mask[:, :1]).all() and mask.any()
    a, b = _frames(seed=4), _frames(seed=5)
    hidden_a = VideoFusionPretrain._hide(a, mask)
    # b differs from a only under the mask: the stem sees the same hidden clip at every masked cell
    pixels = torch.nn.functional.interpolate(mask.flatten(0, 1)[:, None].float(), size=(32, 32)).view(2, 4, 1, 32, 32)
    hidden_b = VideoFusionPretrain._hide(a * (1 - pixels) + b * pixels, mask)
    with torch.no_grad():
        out_a, out_b = stem(hidden_a), stem(hidden_b)
        torch.testing.assert_close(out_a[mask], out_b[mask])
        torch.testing.assert_close(out_a[mask], stem(torch.zeros_like(a))[mask])
    # without tubes a masked cell would be read from the next frame: refused, naming the keys
    with pytest.raises(ValueError, match=r"model.mvm_tube=false with model.arch.temporal_stem=tubelet"):
        tiny_module(mvm_tube=False)
    assert tiny_module(mvm_tube=False, temporal_stem="per_frame").hparams.mvm_tube is False


def test_mvm_targets_line_up_with_the_tokens(processor: TextProcessor) -> None:
    module = tiny_module(mvm_target="pixels")
    batch = fake_batch(processor, ["a red circle", "blue square"], [None, "SALE"])
    frames = module.normalize(batch["frames"])
    assert module._mvm_target(frames).shape[:2] == module.model.video_tokens(frames).shape[:2]


def test_title_only_vtc_text_ignores_ocr(processor: TextProcessor) -> None:
    module = tiny_module().eval()
    m = module.model
    with_ocr = processor(["a red circle moving left", "blue square"], [["SALE 93"], "PROMO"])
    title_only = processor(["a red circle moving left", "blue square"], [None, None])
    with torch.no_grad():
        torch.testing.assert_close(m.encode_text(with_ocr), m.encode_text(title_only), rtol=1e-5, atol=1e-6)
        # by hand: the title sequence alone through the text encoder, mean-pooled, projected
        states = m.text_encoder(input_ids=title_only["input_ids"], attention_mask=title_only["attention_mask"],
                                token_type_ids=title_only["token_type_ids"]).last_hidden_state
        keep = title_only["attention_mask"].unsqueeze(-1).float()
        manual = torch.nn.functional.normalize(m.vtc_text((states * keep).sum(1) / keep.sum(1)), dim=-1)
        torch.testing.assert_close(m.encode_text(with_ocr), manual, rtol=1e-5, atol=1e-6)
    every = tiny_module(vtc_text="all").eval().model
    with torch.no_grad():
        assert not torch.allclose(every.encode_text(with_ocr), every.encode_text(title_only), atol=1e-4)


def test_checkpoint_configs_rebuild_the_stem_and_old_ones_stay_per_frame() -> None:
    module = tiny_module().eval()
    config = video_model_config(module.model, *module.frame_arch)
    assert config["fusion"]["temporal_stem"] == "tubelet" and config["fusion"]["vtc_text"] == "title"
    rebuilt = build_video_model(config).eval()
    rebuilt.load_state_dict(module.model.state_dict(), strict=True)
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_video(frames), module.model.encode_video(frames))
    # a config written before the stem and the title-only text existed
    old = {**config, "fusion": {k: v for k, v in config["fusion"].items()
                                if k not in ("temporal_stem", "tubelet_frames", "vtc_text", "image_size",
                                             "temperature")}}
    legacy = build_video_model(old)
    assert legacy.temporal_stem is None and legacy.arch.vtc_text == "all"
    assert not any(k.startswith("temporal_stem.") for k in legacy.state_dict())


def test_new_checkpoints_load_and_extract_with_the_stem(video_pretrained: Path) -> None:
    loaded = load_checkpoint(video_pretrained)
    assert loaded.config["architecture"]["fusion"]["temporal_stem"] == "tubelet"
    assert "temporal_stem.proj.weight" in loaded.state_dict
    encoder = load_encoder(video_pretrained, device="cpu")
    module = VideoFusionPretrain.load_from_checkpoint(video_pretrained, map_location="cpu").eval()
    clips = torch.randint(0, 256, (3, 4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module.model.encode_video(module.normalize(clips))
    np.testing.assert_allclose(encoder.embed(clips).numpy(), expected.numpy(), atol=1e-5)
    rows = encoder.encode_videos([c.permute(0, 2, 3, 1).numpy() for c in clips])
    np.testing.assert_allclose(rows, expected.numpy(), atol=1e-5)


def test_module_weighs_validation_and_untrained_steps_with_the_full_weights() -> None:
    module = tiny_module(loss_ramp=0.5, loss_weights={"vtc": 1.0, "vtm": 2.0, "mtm": 1.0, "mvm": 1.0})
    assert module.objective_weights() == module.loss_weights  # outside a trainer: no schedule to follow
    assert FusionArch().temporal_stem == "tubelet" and FusionArch().vtc_text == "title"


def test_divided_space_time_attention_starts_as_the_image_model_and_mixes_frames() -> None:
    import pickle

    module = tiny_module(space_time="divided", temporal_stem="per_frame")
    m = module.model.eval()
    assert len(m.temporal_attn) == len(m.frame_encoder.blocks)
    frames = _frames(seed=2)
    plain = create_backbone("vit_tiny_patch16_224", **VIT).eval()  # the image model, without the hooks
    plain.load_state_dict(m.frame_encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m.frame_grid(frames), encode_frame_grid(plain, frames, 4))
    groups = {g["name"]: {id(p) for p in g["params"]} for g in video_param_groups(m, 1e-3, 0.05)}
    assert id(m.temporal_attn[0].attn.in_proj_weight) in groups["frames"]
    assert id(m.temporal_attn[0].time_embed) in groups["frames/no_decay"]
    # once it has learned something, a frame's tokens depend on the other frames
    with torch.no_grad():
        for temporal in m.temporal_attn:
            temporal.attn.out_proj.weight.normal_(0, 0.2)
        changed = frames.clone()
        changed[:, 3] = torch.randn_like(changed[:, 3])
        first = m.frame_grid(frames)[:, 0]
        assert not torch.allclose(first, m.frame_grid(changed)[:, 0], atol=1e-4)
    clone = pickle.loads(pickle.dumps(m))  # hooks survive spawning processes (DDP spawn, workers)
    with torch.no_grad():
        torch.testing.assert_close(clone.frame_grid(frames), m.frame_grid(frames))
    rebuilt = build_video_model(video_model_config(m, *module.frame_arch)).eval()
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.encode_video(frames), m.encode_video(frames))


def test_divided_attention_needs_a_vit(tmp_path: Path) -> None:
    swin = {"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
            "window_size": 4}
    with pytest.raises(ValueError, match=r"model.arch.space_time=divided needs a ViT-like frame encoder"):
        tiny_module(space_time="divided", frame_encoder="swin_tiny_patch4_window7_224", frame_encoder_kwargs=swin)
