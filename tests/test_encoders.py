"""ImageEncoder and load_encoder: one row per image whatever its form, the checkpoint's preprocessing, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_SWIN
from PIL import Image
from torchvision import transforms as T

import mmpretrain
from mmpretrain import hub
from mmpretrain.data import IMAGENET_MEAN, IMAGENET_STD
from mmpretrain.encoders import ImageEncoder, load_encoder

# A resize other than the default bicubic, so a preprocessing that ignored the checkpoint would show.
INTERPOLATION = "bilinear"


def training_checkpoint(path: Path) -> Path:
    """Save a real Lightning checkpoint of a tiny MoBY (random weights), as `mmpretrain-train` writes them."""
    from mmpretrain.ssl import MoBY

    torch.manual_seed(0)
    model = MoBY(
        backbone=TINY_SWIN["backbone"],
        backbone_kwargs=TINY_SWIN["backbone_kwargs"],
        image_size=TINY_SWIN["image_size"],
        proj_hidden_dim=64,
        proj_dim=16,
        queue_len=64,
        interpolation=INTERPOLATION,
    )
    trainer = pl.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch=0-step=0.ckpt")


@pytest.fixture(scope="module")
def encoder(ckpt: Path) -> ImageEncoder:
    return load_encoder(ckpt, device="cpu")


@pytest.fixture(scope="module")
def images(demo_root: Path) -> list[Path]:
    return sorted((demo_root / "val").rglob("*.png"))[:6]


def test_paths_pil_and_arrays_give_the_same_rows(encoder: ImageEncoder, images: list[Path]) -> None:
    from_paths = encoder.encode_images(images, batch_size=4)
    pil = [Image.open(p) for p in images]
    arrays = [np.array(Image.open(p).convert("RGB")) for p in images]
    mixed = [str(images[0]), pil[1], arrays[2], images[3], pil[4], arrays[5]]
    assert from_paths.shape == (len(images), encoder.embed_dim) and from_paths.dtype == np.float32
    np.testing.assert_allclose(encoder.encode_images(pil, batch_size=4), from_paths, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_images(arrays, batch_size=4), from_paths, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_images(mixed, batch_size=4), from_paths, atol=1e-6)
    np.testing.assert_allclose(encoder.encode_images(np.stack(arrays), batch_size=4), from_paths, atol=1e-6)
    # batching must not change a row
    np.testing.assert_allclose(encoder.encode_images(images, batch_size=1), from_paths, atol=1e-5)
    assert not np.allclose(from_paths[0], from_paths[1])


def test_grayscale_and_rgba_inputs_become_rgb(encoder: ImageEncoder, images: list[Path]) -> None:
    rgb = np.array(Image.open(images[0]).convert("RGB"))
    gray = np.array(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    out = encoder.encode_images([gray, gray[:, :, None], Image.fromarray(gray), rgba, rgb])
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)
    np.testing.assert_allclose(out[2], out[0], atol=1e-6)
    np.testing.assert_allclose(out[3], out[4], atol=1e-6)


def test_rows_are_l2_normalized_by_default(encoder: ImageEncoder, images: list[Path]) -> None:
    normalized = encoder.encode_images(images)
    raw = encoder.encode_images(images, normalize=False)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalized, atol=1e-5)


def test_matches_a_manual_timm_forward_with_the_checkpoint_preprocessing(
    ckpt: Path, encoder: ImageEncoder, images: list[Path]
) -> None:
    loaded = hub.load_checkpoint(ckpt)
    arch = loaded.config["architecture"]
    kwargs = {k: v for k, v in arch["kwargs"].items() if k != "drop_path_rate"}
    model = timm.create_model(arch["name"], pretrained=False, num_classes=0, **kwargs).eval()
    model.load_state_dict(loaded.state_dict)
    size = TINY_SWIN["image_size"]
    pre = T.Compose([
        T.Resize(round(size / 0.875), interpolation=T.InterpolationMode(INTERPOLATION)),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    with torch.inference_mode():
        batch = torch.stack([pre(Image.open(p).convert("RGB")) for p in images])
        expected = F.normalize(model(batch), dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode_images(images), expected, atol=1e-5)
    assert encoder.preprocessing["interpolation"] == INTERPOLATION


def test_bad_inputs_name_the_item(encoder: ImageEncoder, images: list[Path], tmp_path: Path) -> None:
    good = str(images[0])
    with pytest.raises(TypeError, match=r"images\[1\].*got int"):
        encoder.encode_images([good, 7])
    with pytest.raises(TypeError, match=r"images\[1\].*uint8.*float32"):
        encoder.encode_images([good, np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match=r"images\[2\].*shape \(3, 32, 32\)"):
        encoder.encode_images([good, good, np.zeros((3, 32, 32), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\].*Tensor.*permute"):
        encoder.encode_images([torch.zeros(3, 8, 8)])
    with pytest.raises(TypeError, match="wrap it in a list"):
        encoder.encode_images(good)
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=r"images\[1\].*missing\.png"):
        encoder.encode_images([good, missing])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode_images([good], batch_size=0)


def test_bf16_and_channels_last_stay_close_to_fp32(ckpt: Path, encoder: ImageEncoder, images: list[Path]) -> None:
    reference = encoder.encode_images(images)
    for kwargs in ({"dtype": "bf16"}, {"channels_last": True}):
        variant = load_encoder(ckpt, device="cpu", **kwargs)
        out = variant.encode_images(images)
        assert out.dtype == np.float32
        cosine = (out * reference).sum(axis=1)
        assert cosine.min() > 0.99, (kwargs, cosine)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        load_encoder(ckpt, device="cpu", dtype="fp8")


def test_load_encoder_from_published_folder_file_and_training_checkpoint(
    ckpt: Path, encoder: ImageEncoder, images: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "published"
    entry = hub.publish(ckpt, out, name="tiny_moby")
    reference = encoder.encode_images(images)
    for source in (out, out / hub.WEIGHTS_FILE, entry["url"]):
        published = mmpretrain.load_encoder(source, device="cpu")
        assert published.name == "tiny_moby"
        assert published.embed_dim == encoder.embed_dim == 8 * TINY_SWIN["backbone_kwargs"]["embed_dim"]
        assert published.preprocessing["interpolation"] == INTERPOLATION
        np.testing.assert_allclose(published.encode_images(images), reference, atol=1e-6)
    assert encoder.device == torch.device("cpu")


def test_package_api_is_lazy_and_lists_checkpoints() -> None:
    code = "import sys, mmpretrain; assert 'torch' not in sys.modules, 'eager import'; print(mmpretrain.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
    assert {"moby_swin_t_300ep", "moby_deit_small_300ep"} <= set(mmpretrain.list_pretrained())
    assert callable(mmpretrain.load_encoder)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = mmpretrain.nope


def test_the_encoder_protocol_gives_encode_images_rows(encoder: ImageEncoder, images: list[Path]) -> None:
    """Extraction's calls (batch_loader, embed_batch) give the rows encode_images gives; the fingerprint follows
    the weights."""
    from mmpretrain.encoders import Encoder, InputLoader

    assert isinstance(encoder, Encoder) and encoder.kind == "image"
    assert encoder.settings() == {"precision": "fp32"}
    loader = encoder.batch_loader()
    assert isinstance(loader, InputLoader) and loader.shape == (3, 32, 32)
    pixels = torch.stack([loader(str(p)) for p in images[:2]] + [loader(Image.open(images[2]))])
    rows = encoder.embed_batch(pixels, titles=["ignored"] * 3).numpy()
    np.testing.assert_allclose(rows, encoder.encode_images(images[:3]), atol=1e-5)
    before = encoder.weights_sha256()
    assert before == encoder.weights_sha256() and len(before) == 64
    weight = next(encoder.backbone.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0].add_(1.0)
    try:
        assert encoder.weights_sha256() != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert encoder.weights_sha256() == before


def test_a_video_encoder_answers_the_same_protocol(video_pretrained: Path, video_demo) -> None:
    from mmpretrain.encoders import Encoder
    from mmpretrain.video import read_video_manifest

    encoder = load_encoder(video_pretrained, device="cpu", embedding="fused")
    assert isinstance(encoder, Encoder) and encoder.kind == "video"
    assert encoder.settings() == {"precision": "fp32", "embedding": "fused"}
    records = read_video_manifest(video_demo["val"])[:2]
    loader = encoder.batch_loader()
    clips = torch.stack([loader(r.video) for r in records])
    assert clips.shape == (2, *loader.shape) and clips.dtype == torch.uint8
    titles = [r.title or "" for r in records]
    rows = encoder.embed_batch(clips, titles, [""] * 2).numpy()
    expected = encoder.encode_videos([r.video for r in records], titles=titles, ocr=[""] * 2)
    np.testing.assert_allclose(rows, expected, atol=1e-5)
