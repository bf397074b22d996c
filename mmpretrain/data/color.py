"""Colour jitter with torchvision's draws and PIL's arithmetic, its hue step vectorized.

torchvision's ``adjust_hue`` on a PIL image converts RGB to PIL's 8-bit HSV, adds the hue shift with uint8 wrap-around
and converts back; both conversions run per pixel in floating point and took most of MoBY's augmentation time. The
same pixels come from a few table look-ups over whole arrays: the hue from (which channel is max and which is in the
middle, max - middle, max - min), the saturation and ``p = round(v (1 - s))`` from (max, max - min), both filled by
PIL's own conversion of every such colour; back to RGB each hue sector puts ``v``, ``p`` and a third value
``round(v w(h, s))`` into its channels, ``w`` computed with the float types of PIL's C code. Tables: < 1 MiB, built
once per process at first use (about 0.5 s). ``tests/test_color.py`` compares against torchvision on PIL images.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torchvision import transforms as T


def _hsv(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").convert("HSV"))


# Hue cases of PIL's RGB -> HSV, in its order of tests (r max, else g max, else b): the max channel, the "middle"
# channel (the other channel not at the minimum) and the minimum channel, with a tie going to the middle channel.
_CASES = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _case(order: int) -> int:
    """The case of a pixel from three comparisons, bits of ``order``: r >= g (1), g >= b (2), r >= b (4)."""
    r_ge_g, g_ge_b, r_ge_b = order & 1, order >> 1 & 1, order >> 2 & 1
    if r_ge_g and r_ge_b:  # r is the max; b is the minimum unless b > g
        return 0 if g_ge_b else 1
    if g_ge_b:  # g is the max (and r below it); r is the middle unless b > r
        return 2 if r_ge_b else 3
    return 4 if r_ge_g else 5  # b is the max; the middle is r unless g > r


_ORDER_CASE = [_case(order) for order in range(8)]  # orders no colour has map to any case: never looked up


@functools.cache
def _hue_tables() -> dict[str, np.ndarray]:
    # PIL's hue depends on the case and on d = max - middle and c = max - min only (it divides the differences):
    # one table per case over (d, c), filled with PIL's hue of the colour with max 255, then one per order (the
    # three comparisons `adjust_hue` makes), a copy of its case's
    d, c = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    hue_of = np.empty((6, 256, 256), dtype=np.uint8)
    for case, (top, middle, low) in enumerate(_CASES):
        rgb = np.empty((256, 256, 3), dtype=np.int64)
        rgb[..., top], rgb[..., middle], rgb[..., low] = 255, 255 - d, 255 - c
        hue_of[case] = _hsv(np.clip(rgb, 0, 255))[..., 0]  # entries with d > c are never looked up
    # saturation depends on (v, c) only: the colour (v, v - c, v - c) for c <= v
    v = d
    grey = v - np.minimum(c, v)
    saturation = _hsv(np.stack([v, grey, grey], -1))[..., 1]
    # HSV -> RGB: per hue sector the channels are v, p = round(v (1 - s)) and the third value round(v w(h, s))
    # with w = 1 - s f (odd sectors) or 1 - s (1 - f) (even), f the hue's fraction within its sector; p is the
    # blue channel of hue 0 for every (s, v), as PIL converts
    hsv = np.stack([np.zeros_like(d), d, c], -1).astype(np.uint8)  # (s, v) grid
    low = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))[..., 2]
    h = np.arange(256, dtype=np.float64)
    i = np.floor(h * 6.0 / 255.0)
    f = (h * 6.0 / 255.0 - i).astype(np.float32)
    fs = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
    odd = (i.astype(np.int64) % 2 == 1)[:, None]
    w = np.where(odd, 1.0 - (fs[None, :] * f[:, None]).astype(np.float64), 1.0 - fs[None, :] * (1.0 - f[:, None]))
    low_of = low[saturation, v]  # [v, c]: p of the colour's own saturation
    by_order = hue_of[_ORDER_CASE]  # [order, d, c]: looked up by the pixel's three comparisons
    flat = {"hue": by_order, "saturation": saturation, "weight": w, "low": low_of}
    return {"sector": (i.astype(np.int64) % 6).astype(np.uint8)} | {
        name: np.ascontiguousarray(table).reshape(-1) for name, table in flat.items()
    }


# per output channel, the hue sectors where it is v, p and the third value (colorsys: v,t,p / q,v,p / p,v,t /
# p,q,v / t,p,v / v,p,q)
_ROLES = [((0, 5), (2, 3), (1, 4)), ((1, 2), (4, 5), (0, 3)), ((3, 4), (0, 1), (2, 5))]


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision's ``adjust_hue`` for a PIL RGB image, the same pixels, about three times faster."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    if image.mode != "RGB":
        return T.functional.adjust_hue(image, hue_factor)
    tables = _hue_tables()
    r, g, b = (np.asarray(band) for band in image.split())
    v = np.maximum(np.maximum(r, g), b)
    spread = v - np.minimum(np.minimum(r, g), b)
    middle = r + g + b - v - (v - spread)  # uint8 wrap-around leaves the middle value
    order = (r >= g).view(np.uint8) | ((g >= b).view(np.uint8) << 1) | ((r >= b).view(np.uint8) << 2)
    index = (order.astype(np.uint32) << 16) | ((v - middle).astype(np.uint32) << 8) | spread
    hue = tables["hue"].take(index)
    hue += np.uint8(np.int32(hue_factor * 255).astype(np.uint8))  # wraps around, as torchvision's uint8 sum
    vc = (v.astype(np.uint16) << 8) | spread
    s = tables["saturation"].take(vc)
    value = v.astype(np.float64)
    value *= tables["weight"].take((hue.astype(np.uint16) << 8) | s)
    value += 0.5
    third = value.astype(np.uint8)  # round half up (C's round for these positive values)
    low = tables["low"].take(vc)
    sector = tables["sector"].take(hue)
    masks = [(sector == k).view(np.uint8) for k in range(6)]
    channels = [v * (masks[a] | masks[b]) + low * (masks[c] | masks[d]) + third * (masks[e] | masks[f])
                for (a, b), (c, d), (e, f) in _ROLES]
    return Image.merge("RGB", [Image.fromarray(channel) for channel in channels])


class FastColorJitter:
    """``RandomApply([ColorJitter(...)], p)`` on PIL images: torchvision's draws in torchvision's order (apply or
    not, the permutation of the four ops, the four factors), brightness/contrast/saturation by PIL's enhancers as
    torchvision does, hue by :func:`adjust_hue`. The same torch seed gives the same image as the torchvision op."""

    def __init__(self, jitter: T.ColorJitter, p: float = 1.0) -> None:
        self.jitter, self.p = jitter, p

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p < torch.rand(1):
            return image
        j = self.jitter
        draws = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        order, brightness, contrast, saturation, hue = draws
        for op in order.tolist():
            if op == 0 and brightness is not None:
                image = ImageEnhance.Brightness(image).enhance(brightness)
            elif op == 1 and contrast is not None:
                image = ImageEnhance.Contrast(image).enhance(contrast)
            elif op == 2 and saturation is not None:
                image = ImageEnhance.Color(image).enhance(saturation)
            elif op == 3 and hue is not None:
                image = adjust_hue(image, hue)
        return image

    def __repr__(self) -> str:
        return f"FastColorJitter({self.jitter!r}, p={self.p})"


class FastGrayscale:
    """``RandomGrayscale(p)``'s draw, but the grey image stays single-channel ("L"): the ops after it (blur,
    solarize) act per channel, so running them once on L and repeating the channel at the end gives torchvision's
    pixels for a third of the work."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("L") if torch.rand(1) < self.p else image

    def __repr__(self) -> str:
        return f"FastGrayscale(p={self.p})"


def fast_twin(op: object) -> object:
    """The fast twin of a torchvision colour op on PIL images (same draws, same pixels); any other op unchanged."""
    if isinstance(op, T.ColorJitter):
        return FastColorJitter(op)
    if isinstance(op, T.RandomApply) and len(op.transforms) == 1 and isinstance(op.transforms[0], T.ColorJitter):
        return FastColorJitter(op.transforms[0], op.p)
    if isinstance(op, T.RandomGrayscale):
        return FastGrayscale(op.p)
    return op
