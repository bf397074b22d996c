"""The project's two-view pipeline (draft JPEG decoding, fused steps) draws the same augmentations as the official
Transformer-SSL pipeline: crop scale, flip rate, blur probability and sigma, solarize probability, per view."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import PIL.ImageFilter
import PIL.ImageOps
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from scipy import stats
from torchvision import transforms as T

from mmpretrain.data.transforms import TwoViewTransform, ViewAugment, byol_view_transform

DRAWS = 400  # per view and pipeline: a proportion's standard error is at most 0.025
SIZE = 128  # the blur kernel (13 px) spans +-3 sigma, so the PIL blur path is the one under test


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data", Path(__file__).parents[1] / "scripts/bench_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Counts what the augmentation ops do, patched in where both pipelines call them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.areas: list[float] = []
        self.flips = self.solarized = self.drafts = 0
        self.sigmas: list[float] = []
        params, hflip, solarize = T.RandomResizedCrop.get_params, F.hflip, PIL.ImageOps.solarize
        blur, draft = PIL.ImageFilter.GaussianBlur, JpegImageFile.draft
        rec = self

        def get_params(img, scale, ratio):
            top, left, h, w = params(img, scale, ratio)
            rec.areas.append(h * w / (img.size[0] * img.size[1]))
            return top, left, h, w

        def flip(img):
            rec.flips += 1
            return hflip(img)

        def sol(img, threshold=128):
            rec.solarized += 1
            return solarize(img, threshold)

        class Blur(blur):
            def __init__(self, radius=2):
                rec.sigmas.append(float(radius))
                super().__init__(radius)

        def counted_draft(img, mode, size):
            rec.drafts += 1
            return draft(img, mode, size)

        monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(get_params))
        monkeypatch.setattr(F, "hflip", flip)
        monkeypatch.setattr(PIL.ImageOps, "solarize", sol)
        monkeypatch.setattr(PIL.ImageFilter, "GaussianBlur", Blur)
        monkeypatch.setattr(JpegImageFile, "draft", counted_draft)


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _measure(monkeypatch, run) -> Recorder:
    rec = Recorder(monkeypatch)
    torch.manual_seed(0)
    np.random.seed(0)
    for _ in range(DRAWS):
        run()
    monkeypatch.undo()
    return rec


def _same_rate(a: int, b: int, n: int) -> None:
    pooled = (a + b) / (2 * n)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * 2 / n)
    assert abs(a - b) / n <= 4 * se + 1e-9, (a, b, n)


@pytest.mark.slow
@pytest.mark.parametrize("view", [0, 1])
def test_project_views_draw_the_official_augmentations(monkeypatch: pytest.MonkeyPatch, view: int) -> None:
    data = _jpeg()
    recipe = byol_view_transform(SIZE, ViewAugment(), view)  # BYOL's: blur 1.0 / 0.1, solarize 0 / 0.2
    ours = TwoViewTransform(recipe, recipe)  # both outputs from this view: two draws per call
    bench, official = _bench(), []

    def run_ours() -> None:
        with Image.open(io.BytesIO(data)) as img:
            a, b = ours(img)
        assert a.shape == b.shape == (3, SIZE, SIZE)

    def run_official() -> None:
        if not official:  # built under the patches: it holds ImageOps.solarize itself
            official.append(bench.official_views(SIZE)[view])
        img = Image.open(io.BytesIO(data)).convert("RGB")
        official[0](img), official[0](img)

    mine, theirs = _measure(monkeypatch, run_ours), _measure(monkeypatch, run_official)
    n = 2 * DRAWS
    assert len(mine.areas) == len(theirs.areas) == n
    assert stats.ks_2samp(mine.areas, theirs.areas).pvalue > 1e-3
    assert min(mine.areas) >= 0.08 and max(mine.areas) <= 1.0
    _same_rate(mine.flips, theirs.flips, n)
    _same_rate(len(mine.sigmas), len(theirs.sigmas), n)
    _same_rate(mine.solarized, theirs.solarized, n)
    if view == 0:
        assert len(mine.sigmas) == len(theirs.sigmas) == n and mine.solarized == theirs.solarized == 0
    assert stats.ks_2samp(mine.sigmas, theirs.sigmas).pvalue > 1e-3
    assert 0 < mine.drafts < DRAWS and theirs.drafts == 0  # reduced-size decoding happened, when the crops allowed


def test_draft_decoding_keeps_the_crop_region() -> None:
    """A crop decoded at reduced size shows the same region as the full-size decode (same output, small error)."""
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((1280, 960), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    smooth.save(buf, format="JPEG", quality=95)
    plain = T.Compose([T.RandomResizedCrop(64, scale=(0.5, 1.0)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    fast, full = TwoViewTransform(plain, plain), TwoViewTransform(plain, plain, draft=False)
    for seed in range(5):
        torch.manual_seed(seed)
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            a = fast(img)
            assert img.size != (1280, 960)  # decoded at reduced size
        torch.manual_seed(seed)
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            b = full(img)
        for x, y in zip(a, b):
            assert (x - y).abs().mean() < 0.03
