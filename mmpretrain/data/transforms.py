"""Augmentations: BYOL's asymmetric two-view pipeline (MoBY's recipe) and the evaluation pipelines."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mmpretrain.data.color import fast_twin

# one home for the ImageNet statistics: timm's, whose pretrained weights define them (the hub uses the same)
IMAGENET_MEAN: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
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


class GaussianBlur:
    """PIL's Gaussian blur with σ drawn uniformly from ``sigma`` (pixels): the official BYOL/MoBY blur.

    PIL does not cut the Gaussian short, whatever the image size (torchvision's kernel of 10% of the side, 7 px at
    64 px, would truncate σ = 2 at 1.5σ), and it is several times faster than torchvision's tensor blur on a PIL image.
    """

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


class BorderFillAffine:
    """A random rotation (±`degrees`) and shear (±`shear` degrees on each axis), corners filled with the view's
    border colour.

    Why: drawings and handwriting differ in slant and angle from one person to the next, which crops and flips do not
    model; a fixed black fill would put corners into the views that no evaluation image has. The parameters are
    torchvision's `RandomAffine` draws (torch's generator, seeded per loader worker).
    """

    def __init__(self, degrees: float = 0.0, shear: float = 0.0) -> None:
        if degrees < 0 or shear < 0:
            raise ValueError(f"affine degrees and shear are half-ranges >= 0, got {degrees} and {shear}")
        self.degrees, self.shear = float(degrees), float(shear)

    def params(self, size: tuple[int, int]) -> tuple[float, tuple[float, float]]:
        """(angle, (shear_x, shear_y)) for an image of `size` (width, height)."""
        angle, _, _, shear = T.RandomAffine.get_params(
            [-self.degrees, self.degrees], None, None, [-self.shear, self.shear, -self.shear, self.shear], list(size)
        )
        return angle, shear

    @staticmethod
    def border_colour(image: Image.Image) -> list[int]:
        """Per-channel median of the outermost rows and columns: the background the corners continue."""
        pixels = np.asarray(image)
        edge = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).reshape(-1, len(image.getbands()))
        return [int(v) for v in np.median(edge, axis=0)]

    def __call__(self, image: Image.Image) -> Image.Image:
        angle, shear = self.params(image.size)
        return TF.affine(image, angle, [0, 0], 1.0, list(shear), interpolation=T.InterpolationMode.BILINEAR,
                         fill=self.border_colour(image))  # fmt: skip

    def __repr__(self) -> str:
        return f"BorderFillAffine(degrees={self.degrees}, shear={self.shear})"


def byol_view_transform(
    size: int,
    blur_p: float,
    solarize_p: float,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    grayscale: bool = False,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    flip_p: float = 0.5,
    jitter_p: float = 0.8,
    affine_degrees: float = 0.0,
    affine_shear: float = 0.0,
    jitter_strength: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    grayscale_p: float = 0.2,
) -> T.Compose:
    """One BYOL view: crop, flip, colour jitter 0.4/0.4/0.2/0.1 at p 0.8, grayscale p 0.2, blur, solarize.

    ``jitter_strength`` (brightness, contrast, saturation, hue) and ``grayscale_p`` change BYOL's colour strengths:
    where colour alone tells the images of a small set apart, a stronger distortion makes the views share shape.

    Crops are bilinear, as the official ``RandomResizedCrop``. A ``grayscale`` data set has no hue or saturation
    to jitter and nothing to gain from a grayscale conversion: its jitter is brightness and contrast only.
    ``affine_degrees`` / ``affine_shear`` > 0 add a :class:`BorderFillAffine` after the flip (not in BYOL's recipe;
    off by default).
    """
    if len(jitter_strength) != 4:
        raise ValueError(f"jitter_strength is (brightness, contrast, saturation, hue), got {list(jitter_strength)}")
    brightness, contrast, saturation, hue = (float(v) for v in jitter_strength)
    jitter = T.ColorJitter(brightness, contrast) if grayscale else T.ColorJitter(brightness, contrast, saturation, hue)
    ops: list = [
        T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(p=flip_p),
    ]
    if affine_degrees > 0 or affine_shear > 0:
        ops.append(BorderFillAffine(affine_degrees, affine_shear))
    ops.append(T.RandomApply([jitter], p=jitter_p))
    if not grayscale and grayscale_p > 0:
        ops.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        ops.append(T.RandomApply([GaussianBlur(blur_sigma)], p=blur_p))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=128, p=solarize_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


# JPEG draft decoding reduces by these factors (libjpeg's DCT scaling)
_DRAFT_FACTORS = (8, 4, 2)


class TwoViewTransform:
    """Apply two BYOL view pipelines to one image: MoBY's view 1 (blur 1.0, no solarize) and view 2.

    The two ``T.Compose`` views are the recipe; this class runs them faster without changing a single random
    draw's distribution:

    - Both crop boxes are drawn first (``RandomResizedCrop.get_params`` on the stored size, as the crop op would).
      When every box, decoded at 1/2, 1/4 or 1/8 of the stored size (libjpeg's draft mode), still has at least the
      output's pixels, the JPEG is decoded at that reduced size and the boxes are scaled: the crop then comes from
      the same region with the same output resolution, only the full-size decode is skipped. Other formats, and
      crops that need full resolution, decode as usual. Pass an image opened but not yet loaded (``lazy``).
    - Crop and resize are one ``Image.resize(box=...)`` call; flip, grayscale, blur (PIL's, see
      :class:`GaussianBlur`) and solarize are the views' own ops. Colour jitter is
      :class:`~mmpretrain.data.color.FastColorJitter`: torchvision's draws and pixels, its hue step vectorized.
    - ToTensor and Normalize are one fused step.
    """

    lazy = True

    def __init__(self, view_1: T.Compose, view_2: T.Compose, draft: bool = True) -> None:
        self.view_1, self.view_2 = view_1, view_2
        self.draft = draft
        self._plans = [self._plan(view_1), self._plan(view_2)]

    @staticmethod
    def _plan(view: T.Compose) -> dict:
        ops = list(view.transforms)
        crop, norm = ops[0], ops[-1]
        if not isinstance(crop, T.RandomResizedCrop) or not isinstance(ops[-2], T.ToTensor):
            raise ValueError("a BYOL view starts with RandomResizedCrop and ends with ToTensor, Normalize")
        mean = torch.tensor(norm.mean, dtype=torch.float32).view(3, 1, 1) * 255
        std = torch.tensor(norm.std, dtype=torch.float32).view(3, 1, 1) * 255
        return {"crop": crop, "middle": [fast_twin(op) for op in ops[1:-2]], "mean": mean, "std": std}

    @staticmethod
    def _box(plan: dict, image: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) on the stored size; an opened, unloaded image knows its size."""
        crop = plan["crop"]
        return T.RandomResizedCrop.get_params(image, list(crop.scale), list(crop.ratio))

    def _reduction(self, boxes: list[tuple[int, int, int, int]]) -> int:
        for factor in _DRAFT_FACTORS:
            if all(h >= factor * plan["crop"].size[0] and w >= factor * plan["crop"].size[1]
                   for (_, _, h, w), plan in zip(boxes, self._plans)):
                return factor
        return 1

    def _finish(self, plan: dict, image: Image.Image, box: tuple[float, ...]) -> torch.Tensor:
        crop = plan["crop"]
        out = image.resize((crop.size[1], crop.size[0]), _PIL_RESAMPLE[crop.interpolation], box=box)
        for op in plan["middle"]:
            out = op(out)
        pixels = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy())
        if pixels.ndim == 2:  # a grey view kept single-channel (FastGrayscale): RGB's three equal channels
            return (pixels.float().expand(3, *pixels.shape) - plan["mean"]) / plan["std"]
        return pixels.permute(2, 0, 1).float().sub_(plan["mean"]).div_(plan["std"])

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        size = image.size
        boxes = [self._box(plan, image) for plan in self._plans]
        factor = self._reduction(boxes) if self.draft and image.format == "JPEG" else 1
        if factor > 1:
            image.draft("RGB", (math.ceil(size[0] / factor), math.ceil(size[1] / factor)))
        image.load()
        rgb = image.convert("RGB")
        sx, sy = rgb.width / size[0], rgb.height / size[1]
        views = [self._finish(plan, rgb, (left * sx, top * sy, (left + w) * sx, (top + h) * sy))
                 for plan, (top, left, h, w) in zip(self._plans, boxes)]
        return views[0], views[1]


_PIL_RESAMPLE = {
    T.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    T.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    T.InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    T.InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}


def moby_transform(
    size: int,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    blur_p: tuple[float, float] = (1.0, 0.1),
    solarize_p: tuple[float, float] = (0.0, 0.2),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    grayscale: bool = False,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
    flip_p: float = 0.5,
    jitter_p: float = 0.8,
    affine_degrees: float = 0.0,
    affine_shear: float = 0.0,
    jitter_strength: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
    grayscale_p: float = 0.2,
) -> TwoViewTransform:
    """MoBY's asymmetric augmentation pair (BYOL's): view 1 always blurred, view 2 sometimes solarized."""
    common = dict(crop_scale=crop_scale, mean=mean, std=std, grayscale=grayscale, blur_sigma=blur_sigma,
                  flip_p=flip_p, jitter_p=jitter_p, affine_degrees=affine_degrees,
                  affine_shear=affine_shear, jitter_strength=jitter_strength, grayscale_p=grayscale_p)  # fmt: skip
    return TwoViewTransform(
        byol_view_transform(size, blur_p[0], solarize_p[0], **common),
        byol_view_transform(size, blur_p[1], solarize_p[1], **common),
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
