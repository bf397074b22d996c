"""The vectorized colour ops give torchvision's pixels on PIL images: hue alone, the whole jitter with its random
order, and a whole MoBY view (flip, jitter, grayscale, blur, solarize, normalize) for the same draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision.transforms._functional_pil as F_pil
from PIL import Image
from torchvision import transforms as T

from mmpretrain.data.color import FastColorJitter, FastGrayscale, adjust_hue, fast_twin
from mmpretrain.data.transforms import TwoViewTransform, ViewAugment, byol_view_transform


def _images(rng: np.random.Generator) -> list[np.ndarray]:
    """Noise, few levels (ties between channels, greys), saturated colours, a smooth photo-like image."""
    noise = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    coarse = (noise // 51 * 51).astype(np.uint8)
    tied = noise.copy()
    tied[..., 1] = tied[..., 0]
    extreme = rng.choice(np.array([0, 1, 127, 128, 254, 255], dtype=np.uint8), (40, 56, 3))
    smooth = np.asarray(Image.fromarray(noise[:5, :7]).resize((56, 40), Image.Resampling.BICUBIC))
    return [noise, coarse, tied, extreme, smooth]


def _levels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int64)


def test_adjust_hue_matches_torchvision_on_pil_images() -> None:
    rng = np.random.default_rng(0)
    factors = [-0.5, -0.25, -0.1, -1 / 255, 0.0, 0.003, 0.05, 0.1, 0.3, 0.5, *rng.uniform(-0.5, 0.5, 20)]
    worst, differing, total = 0, 0, 0
    for pixels in _images(rng):
        image = Image.fromarray(pixels)
        for factor in factors:
            diff = np.abs(_levels(adjust_hue(image, float(factor))) - _levels(F_pil.adjust_hue(image, float(factor))))
            worst = max(worst, int(diff.max()))
            differing += int((diff > 0).sum())
            total += diff.size
    assert worst <= 1
    assert differing <= total * 1e-3  # off-by-one is a rare rounding tie, not a different conversion


def test_adjust_hue_rejects_out_of_range_and_passes_grey_images() -> None:
    with pytest.raises(ValueError, match="hue_factor"):
        adjust_hue(Image.new("RGB", (4, 4)), 0.6)
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    assert np.array_equal(np.asarray(adjust_hue(grey, 0.2)), np.asarray(grey))


@pytest.mark.parametrize("jitter", [T.ColorJitter(0.4, 0.4, 0.2, 0.1), T.ColorJitter(0.4, 0.4)])
def test_fast_jitter_equals_torchvision_for_the_same_draws(jitter: T.ColorJitter) -> None:
    """Same torch seed: same apply/skip draw, op order and factors, hence the same image within one level."""
    image = Image.fromarray(_images(np.random.default_rng(1))[4])
    reference, fast = T.RandomApply([jitter], p=0.8), fast_twin(T.RandomApply([jitter], p=0.8))
    assert isinstance(fast, FastColorJitter)
    orders, skipped = set(), 0
    for seed in range(60):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        got = fast(image)
        assert np.abs(_levels(got) - _levels(expected)).max() <= 1, seed
        torch.manual_seed(seed)
        if torch.rand(1) > 0.8:
            skipped += 1
            assert got is image
        else:
            orders.add(tuple(torch.randperm(4).tolist()))
    assert skipped > 0 and len(orders) > 10  # both branches and many op orders were compared


def test_fast_twin_keeps_other_ops_and_the_grayscale_draw() -> None:
    flip = T.RandomHorizontalFlip()
    assert fast_twin(flip) is flip
    grey = fast_twin(T.RandomGrayscale(p=0.2))
    assert isinstance(grey, FastGrayscale)
    image = Image.fromarray(_images(np.random.default_rng(2))[0])
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomGrayscale(p=0.2)(image)
        torch.manual_seed(seed)
        got = grey(image)
        assert np.array_equal(_levels(got), _levels(expected))


@pytest.mark.parametrize("view", [0, 1])
def test_project_view_equals_the_torchvision_ops_for_the_same_draws(view: int) -> None:
    """A whole view (crop box given): the project's executor vs the recipe's torchvision ops after the same crop."""
    recipe = byol_view_transform(64, ViewAugment(), view)  # BYOL's: blur 1.0 / 0.1, solarize 0 / 0.2
    ours = TwoViewTransform(recipe, recipe)
    plan = ours._plans[0]
    rest = T.Compose(recipe.transforms[1:])
    photo = Image.fromarray(_images(np.random.default_rng(3))[4]).resize((160, 120), Image.Resampling.BICUBIC)
    std = torch.tensor(recipe.transforms[-1].std).view(3, 1, 1) * 255
    for seed in range(40):
        box = (10 + seed, 5, 130, 100 + seed // 2)
        torch.manual_seed(seed)
        random.seed(seed)
        got = ours._finish(plan, photo, box)
        torch.manual_seed(seed)
        random.seed(seed)
        expected = rest(photo.resize((64, 64), Image.Resampling.BILINEAR, box=box))
        assert got.shape == expected.shape == (3, 64, 64)
        assert ((got - expected).abs() * std).max() <= 1 + 1e-3, seed
