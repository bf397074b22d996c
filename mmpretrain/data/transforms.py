"""Augmentations: BYOL's asymmetric two-view pipeline (MoBY's recipe) and the evaluation pipelines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# torchvision interpolation names a checkpoint's preprocessing may ask for
INTERPOLATIONS: tuple[str, ...] = tuple(mode.value for mode in T.InterpolationMode)


class FrameNormalize(nn.Module):
    """uint8 frames ``(..., 3, H, W)`` -> float, scaled to [0, 1] and normalized by ``mean`` / ``std``.

    Video clips travel as uint8 and are normalized batched on the model's device, which costs a fraction of doing it
    per clip in DataLoader workers; the buffers are not saved (the checkpoint's preprocessing config holds them).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames.float() / 255 - self.mean) / self.std


def _blur_kernel(size: int) -> int:
    """BYOL blurs with a kernel of 10% of the image side (23 px at 224), always odd."""
    k = max(3, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def byol_view_transform(
    size: int,
    blur_p: float,
    solarize_p: float,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """One BYOL view: crop, flip, colour jitter 0.4/0.4/0.2/0.1 at p 0.8, grayscale p 0.2, blur, solarize."""
    ops: list = [
        T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        ops.append(T.RandomApply([T.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=128, p=solarize_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class TwoViewTransform:
    """Apply two different pipelines to one image: MoBY's view 1 (blur 1.0, no solarize) and view 2."""

    def __init__(self, view_1: T.Compose, view_2: T.Compose) -> None:
        self.view_1, self.view_2 = view_1, view_2

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view_1(image), self.view_2(image)


def moby_transform(
    size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    blur_p: tuple[float, float] = (1.0, 0.1),
    solarize_p: tuple[float, float] = (0.0, 0.2),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> TwoViewTransform:
    """MoBY's asymmetric augmentation pair (BYOL's): view 1 always blurred, view 2 sometimes solarized."""
    return TwoViewTransform(
        byol_view_transform(size, blur_p[0], solarize_p[0], crop_scale, mean, std),
        byol_view_transform(size, blur_p[1], solarize_p[1], crop_scale, mean, std),
    )


def eval_transform(
    size: int,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> T.Compose:
    """Resize the short side to size/crop_pct (256 for 224), centre crop: the linear-eval test pipeline.

    `interpolation` comes from the checkpoint's preprocessing, so evaluation sees what extraction sees.
    """
    return T.Compose(
        [
            T.Resize(round(size / crop_pct), interpolation=T.InterpolationMode(interpolation)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def linear_train_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> T.Compose:
    """Linear-probe training pipeline of the paper: random resized crop and flip only."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo `Normalize` for display, clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0, 1)
