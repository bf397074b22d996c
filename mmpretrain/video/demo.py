"""A deterministic demo video set: moving shapes with titles that describe them and OCR text burnt into the frames.

The class label is the shape (circle, square, triangle, cross); colour, direction and speed vary and appear in
the tags and, worded in varied templates, in the title, so title-video matching has to look at motion and colour
as well as shape. A short caption ("PROMO 42") is drawn in a corner and listed in `ocr`. About 10% of videos
have no title and 10% no OCR, to exercise missing text. Most videos are H.264 in MP4; `avi_fraction` are
MPEG-4 Part 2 in AVI, so both decoders' paths get used.

    python -m mmpretrain.video.demo OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmpretrain._io import atomic_path
from mmpretrain.video.io.manifest import write_video_manifest

DEMO_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
DEMO_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (50, 185, 70),
    "blue": (45, 95, 235),
    "yellow": (240, 215, 40),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
_TOWARD = {
    "left": ("left", "to the left", "leftwards"),
    "right": ("right", "to the right", "rightwards"),
    "up": ("up", "upwards", "towards the top"),
    "down": ("down", "downwards", "towards the bottom"),
}
_TITLES = (
    "a {colour} {shape} moving {toward}",
    "{colour} {shape} slides {toward}",
    "watch the {colour} {shape} go {toward}",
    "a {shape} in {colour} heading {toward}",
    "the {colour} {shape} drifts {toward}",
    "{colour} {shape} travelling {toward}",
)
_OCR_WORDS = ("PROMO", "SALE", "NEW", "LIVE", "DEAL", "HOT", "TOP", "WOW", "VLOG", "TIPS")
_MISSING_TEXT = 0.1


DEMO_ATTRIBUTES = ("colour", "shape", "direction", "speed")


def demo_attribute(tag: str) -> str:
    """Which attribute a demo tag names: ``colour``, ``shape``, ``direction`` (``moving-*``) or ``speed``."""
    if tag in DEMO_COLOURS:
        return "colour"
    if tag in DEMO_SHAPES:
        return "shape"
    return "direction" if tag.startswith("moving-") else "speed"


def attribute_agreement(per_tag: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-tag top-1 agreement (``t2v_tags`` of a retrieval evaluation) pooled per attribute, weighted by queries.

    Example:
        >>> attribute_agreement({"red": {"agreement": 1.0, "queries": 3}, "blue": {"agreement": 0.0, "queries": 1},
        ...                      "moving-up": {"agreement": 0.5, "queries": 4}})
        {'colour': 0.75, 'direction': 0.5}
    """
    hits: dict[str, list[float]] = {}
    for tag, row in per_tag.items():
        pooled = hits.setdefault(demo_attribute(tag), [0.0, 0.0])
        pooled[0] += row["agreement"] * row["queries"]
        pooled[1] += row["queries"]
    return {a: hits[a][0] / hits[a][1] for a in DEMO_ATTRIBUTES if a in hits and hits[a][1]}


def _title(rng: np.random.Generator, shape: str, colour: str, direction: str, fast: bool) -> str:
    template = _TITLES[rng.integers(len(_TITLES))]
    toward = _TOWARD[direction][rng.integers(3)]
    if fast:
        toward = f"{('quickly', 'fast')[rng.integers(2)]} {toward}"
    return template.format(colour=colour, shape=shape, toward=toward)


def _captions(rng: np.random.Generator) -> list[str]:
    """One caption like "PROMO 42", and a second one in 30% of videos."""
    count = 1 + int(rng.random() < 0.3)
    return [f"{_OCR_WORDS[rng.integers(len(_OCR_WORDS))]} {rng.integers(10, 100)}" for _ in range(count)]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dim, smooth random texture (upsampled noise): textured, but never confused with the shape."""
    coarse = rng.uniform(30, 110, (6, 6, 3)).astype(np.float32)
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    image = Image.fromarray(np.clip(coarse * tint, 0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape in ("square", "triangle"):
        n = 4 if shape == "square" else 3
        points = [
            (cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k in range(n)
        ]
        draw.polygon(points, fill=fill)
    else:
        w = max(2, round(r * 0.45))
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=w)
        draw.line([cx + dy, cy - dx, cx - dy, cy + dx], fill=fill, width=w)


def _caption(draw: ImageDraw.ImageDraw, text: str, corner: int, size: int, font) -> None:
    """White text on a black box in one of the four corners, readable after compression."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = 1 if corner in (0, 2) else size - w - 1
    y = 1 if corner in (0, 1) else size - h - 1
    draw.rectangle([x, y, x + w, y + h], fill=(0, 0, 0))
    draw.text((x + 2 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)


def _render(
    rng: np.random.Generator,
    shape: str,
    colour: str,
    direction: str,
    fast: bool,
    ocr: list[str],
    num_frames: int,
    size: int,
) -> list[np.ndarray]:
    background = _background(rng, size)
    r = size * rng.uniform(0.12, 0.16)
    travel = size * (0.62 if fast else 0.32)
    dx, dy = DIRECTIONS[direction]
    along = rng.uniform(r + 2, size - r - 2 - travel) if travel < size - 2 * r - 4 else r + 2
    across = rng.uniform(size * 0.3, size * 0.7)
    start = along if dx + dy > 0 else size - along
    angle = rng.uniform(0, 2 * math.pi)
    spin = rng.uniform(-0.15, 0.15)
    font = ImageFont.load_default(size=max(8, size // 7))
    corners = rng.permutation(4)
    frames = []
    for t in range(num_frames):
        step = travel * t / max(num_frames - 1, 1)
        pos = start + step * (dx + dy)
        cx, cy = (pos, across) if dx else (across, pos)
        grain = rng.normal(0, 3, (size, size, 1)).astype(np.float32)
        image = Image.fromarray(np.clip(background + grain, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        _draw_shape(draw, shape, cx, cy, r, angle + spin * t, DEMO_COLOURS[colour])
        for k, text in enumerate(ocr):
            if k == 0 or t >= num_frames // 2:  # a second caption appears half-way through
                _caption(draw, text, int(corners[k]), size, font)
        frames.append(np.asarray(image))
    return frames


def _write_video(path: Path, frames: list[np.ndarray], fps: int, codec: str) -> None:
    """Encode RGB frames at constant fps (yuv420p) atomically; the container comes from the file's suffix."""
    container_format = {".mp4": "mp4", ".avi": "avi", ".mkv": "matroska"}[path.suffix]
    height, width = frames[0].shape[:2]
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.codec_context.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.codec_context.bit_rate = 2_000_000
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_videos(
    root: str | Path,
    per_class: int = 24,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    val_fraction: float = 0.25,
    avi_fraction: float = 0.25,
) -> dict[str, Path]:
    """Write `per_class` videos of each shape under `root/videos` and split them into train/val manifests.

    The same seed gives the same content and manifests (encoders may not give the same bytes).

    Returns:
        {"train": root/train.jsonl, "val": root/val.jsonl}
    """
    if per_class < 2 or num_frames < 2 or size < 32:
        raise ValueError(f"need per_class >= 2, num_frames >= 2, size >= 32; got {per_class}, {num_frames}, {size}")
    if not 0 < val_fraction < 1 or not 0 <= avi_fraction <= 1:
        raise ValueError(
            f"val_fraction must be in (0, 1) and avi_fraction in [0, 1], got {val_fraction}, {avi_fraction}"
        )
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    n_val = min(per_class - 1, max(1, round(per_class * val_fraction)))  # each class in both splits
    for c, shape in enumerate(DEMO_SHAPES):
        val_rows = set(np.random.default_rng([seed, c]).permutation(per_class)[:n_val].tolist())
        for j in range(per_class):
            rng = np.random.default_rng([seed, c, j])
            colour = list(DEMO_COLOURS)[rng.integers(len(DEMO_COLOURS))]
            direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
            fast = bool(rng.random() < 0.3)
            has_title, has_ocr = rng.random() >= _MISSING_TEXT, rng.random() >= _MISSING_TEXT
            captions = _captions(rng) if has_ocr else []
            avi = rng.random() < avi_fraction
            vid = f"{shape}-{j:03d}"
            path = root / "videos" / (vid + (".avi" if avi else ".mp4"))
            frames = _render(rng, shape, colour, direction, fast, captions, num_frames, size)
            _write_video(path, frames, fps, "mpeg4" if avi else "libx264")
            tags = [colour, shape, f"moving-{direction}"] + (["fast"] if fast else [])
            entry = {"id": vid, "video": f"videos/{path.name}", "label": shape, "tags": tags}
            if has_title:
                entry["title"] = _title(rng, shape, colour, direction, fast)
            if captions:
                entry["ocr"] = captions
            splits["val" if j in val_rows else "train"].append(entry)
    return {name: write_video_manifest(entries, root / f"{name}.jsonl") for name, entries in splits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo video set (moving shapes, titles, OCR text).")
    parser.add_argument("out_dir")
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = make_demo_videos(args.out_dir, args.per_class, args.num_frames, args.size, args.fps, args.seed)
    counts = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in paths.items()}
    summary = {name: str(path) for name, path in paths.items()}
    print(json.dumps({**summary, "counts": counts, "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
