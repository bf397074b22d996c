"""The demo's data: real handwriting split for the one-shot story, and procedural shapes for the video half.

:func:`omniglot_demo` splits the vendored Omniglot drawings (:func:`mmpretrain.data.omniglot.omniglot_folder`) into
the file lists of `make demo`'s image half: unlabelled drawings of three alphabets to pretrain on, one labelled
drawing per character of a held-out alphabet to fit on, a few more to estimate with, the rest to predict, and an
alphabet never fitted to reject.

:func:`make_demo_images` writes shapes whose class is the shape, never the colour: colour, position, size, rotation
and background vary at random, so a classifier must see shape. Colours come from a small shared palette: with a
unique colour pair per image, instance discrimination (what MoBY trains) could be solved by colour alone and would
never need to look at shape. The video half's frame encoder starts from a MoBY run on them (32-px colour frames).
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mmpretrain.data.omniglot import omniglot_folder
from mmpretrain.errors import DataError

DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "stripes", "ring", "star", "checker")


PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (250, 250, 250), (20, 20, 20),
)


def _polygon(cx: float, cy: float, radius: float, points: int, angle: float, inner: float = 1.0) -> list:
    verts = []
    for i in range(points * (2 if inner < 1 else 1)):
        r = radius if inner >= 1 or i % 2 == 0 else radius * inner
        a = angle + math.pi * 2 * i / (points * (2 if inner < 1 else 1))
        verts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return verts


def draw_shape(shape: str, size: int, rng: random.Random) -> Image.Image:
    """Draw one sample of `shape` on a noisy random background."""
    bg, fg = rng.sample(PALETTE, 2)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65)
    angle = rng.uniform(0, 2 * math.pi)
    w = max(2, int(r * 0.35))
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif shape == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fg, width=w)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.2, 4, angle), fill=fg)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, angle), fill=fg)
    elif shape == "star":
        d.polygon(_polygon(cx, cy, r * 1.3, 5, angle, inner=0.45), fill=fg)
    elif shape == "cross":
        dx, dy = math.cos(angle) * r, math.sin(angle) * r
        d.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fg, width=w)
        d.line([cx + dy, cy - dx, cx - dy, cy + dx], fill=fg, width=w)
    elif shape == "stripes":
        period = max(4, int(size * rng.uniform(0.12, 0.2)))
        for off in range(-size, 2 * size, period):
            d.line([off, 0, off + size * math.cos(angle), size], fill=fg, width=max(2, period // 2))
    elif shape == "checker":
        cell = max(3, int(size * rng.uniform(0.12, 0.2)))
        for y in range(0, size, cell):
            for x in range(0, size, cell):
                if (x // cell + y // cell) % 2 == 0:
                    d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fg)
    else:
        raise ValueError(f"unknown demo shape '{shape}'; choose from {DEMO_CLASSES}")
    sigma = rng.uniform(10, 40)
    grain = np.random.default_rng(rng.randrange(2**32)).normal(128, sigma, (size, size))
    noise = Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8)).convert("RGB")
    return Image.blend(img, noise, 0.15).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_demo_images(
    root: str | Path,
    num_classes: int = 6,
    train_per_class: int = 100,
    val_per_class: int = 40,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write `root/{train,val}/<class>/<n>.png`; the same arguments always give the same bytes."""
    if not 2 <= num_classes <= len(DEMO_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(DEMO_CLASSES)}], got {num_classes}")
    root = Path(root)
    for split, count, offset in (("train", train_per_class, 0), ("val", val_per_class, 1_000_000)):
        for c, shape in enumerate(DEMO_CLASSES[:num_classes]):
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = random.Random(seed * 10_000_019 + offset + c * 100_003 + i)
                draw_shape(shape, size, rng).save(folder / f"{i:05d}.png")
    return root


@dataclass(frozen=True)
class OmniglotDemo:
    """The image half's file lists (absolute paths; a drawing's character is the name of its folder).

    Attributes:
        pretrain: unlabelled drawings of the pretraining alphabets, one path a line.
        support: one drawing of each known character, ``path<TAB>character``: what a one-shot classifier fits on.
        labelled: the first ``labelled`` drawings of each known character (the support's among them),
            ``path<TAB>character``: what the estimate is made from.
        queries: every other drawing of the known characters, one path a line: what is predicted and measured.
        others: a few unlabelled drawings of each pretraining character, one path a line: "anything else" that the
            unknown threshold is placed against.
        unknown: drawings of an alphabet that takes no part in pretraining or fitting, one path a line.
    """

    root: Path
    known: str
    pretrain: Path
    support: Path
    labelled: Path
    queries: Path
    others: Path
    unknown: Path


def omniglot_demo(
    data: str | Path,
    lists: str | Path,
    pretrain: tuple[str, ...] = ("Greek", "Latin", "Tagalog"),
    known: str = "Japanese_(katakana)",
    unknown: str = "Sanskrit",
    labelled: int = 3,
    per_character: int = 5,
    characters: int | None = None,
) -> OmniglotDemo:
    """Unpack the vendored Omniglot drawings under ``data`` and write the demo's file lists to ``lists``.

    Drawings are taken in file order (the suffix numbers the person who drew it), so the same arguments always give
    the same lists. ``per_character`` drawings of each pretraining and unknown character go to ``others`` and
    ``unknown``; ``characters`` keeps the first characters of each alphabet only (a tiny demo for tests).

    Example:
        >>> split = omniglot_demo("data/omniglot", "logs/demo/omniglot")
        >>> split.support.read_text().splitlines()[0].split("\t")[1]
        'character01'

    Raises:
        DataError: an alphabet is not in the vendored set, or ``labelled`` leaves no drawing to predict.
    """
    root = omniglot_folder(data)
    drawings = {a: _drawings(root, a, characters) for a in (*pretrain, known, unknown)}
    if not 1 <= labelled < min(len(d) for d in drawings[known].values()):
        raise DataError(f"labelled={labelled}: keep at least one drawing per character to fit on and one to predict")
    out = Path(lists)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[str]) -> Path:
        (out / name).write_text("".join(f"{row}\n" for row in rows))
        return out / name

    chars = drawings[known]
    return OmniglotDemo(
        root=root,
        known=known,
        pretrain=write("pretrain.txt", [str(p) for a in pretrain for d in drawings[a].values() for p in d]),
        support=write("support.tsv", [f"{d[0]}\t{c}" for c, d in chars.items()]),
        labelled=write("labelled.tsv", [f"{p}\t{c}" for c, d in chars.items() for p in d[:labelled]]),
        queries=write("queries.txt", [str(p) for d in chars.values() for p in d[labelled:]]),
        others=write("others.txt", [str(p) for a in pretrain for d in drawings[a].values() for p in d[:per_character]]),
        unknown=write("unknown.txt", [str(p) for d in drawings[unknown].values() for p in d[:per_character]]),
    )


def _drawings(root: Path, alphabet: str, characters: int | None) -> dict[str, list[Path]]:
    """``{character: [drawing, ...]}`` of one alphabet, in file order."""
    folder = root / alphabet
    if not folder.is_dir():
        names = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{folder}: no such alphabet; choose from {names}")
    found = sorted(p for p in folder.iterdir() if p.is_dir())[:characters]
    return {c.name: sorted(c.glob("*.png")) for c in found}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the deterministic demo image set.")
    parser.add_argument("root")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_demo_images(args.root, args.classes, args.train_per_class, args.val_per_class, args.size, args.seed)
    print(args.root)


if __name__ == "__main__":
    main()
