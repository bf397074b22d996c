"""Pictures of few-shot results: encoders side by side (accuracy with CI, learning curves) and contact sheets.

Matplotlib is imported inside the plotting function and drawn on an Agg canvas, so nothing needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from mmpretrain._io import atomic_path

if TYPE_CHECKING:
    from mmpretrain.fewshot.holdout import Estimate

__all__ = ["contact_sheet", "plot_estimates"]


def plot_estimates(estimates: Sequence[Estimate], path: str | os.PathLike) -> Path:
    """One PNG: held-out accuracy with its 95% CI per encoder (left), learning curves over shots (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10.0, 4.0), dpi=110)
    FigureCanvasAgg(figure)
    bars, curves = figure.subplots(1, 2)
    names = [e.encoder for e in estimates]
    low = [e.accuracy - e.ci95[0] for e in estimates]
    high = [e.ci95[1] - e.accuracy for e in estimates]
    bars.barh(range(len(estimates)), [e.accuracy for e in estimates], xerr=[low, high], capsize=4,
              color=[f"C{i}" for i in range(len(estimates))])
    bars.set_yticks(range(len(estimates)), [n if len(n) < 28 else n[:25] + "…" for n in names], fontsize="small")
    bars.invert_yaxis()
    bars.set_xlim(0, 100)
    bars.set_xlabel(f"held-out accuracy (%) ± 95% CI ({estimates[0].protocol})" if estimates else "accuracy (%)")
    bars.grid(alpha=0.3, axis="x")
    colors = [f"C{i}" for i in range(len(estimates))]
    for e, color in zip(estimates, colors):
        if e.curve:
            curves.errorbar([p["shots"] for p in e.curve], [p["accuracy"] for p in e.curve],
                            yerr=[p["ci95"] for p in e.curve], marker="o", capsize=3, label=e.encoder[:30],
                            color=color)
    shots = sorted({p["shots"] for e in estimates for p in e.curve})
    curves.set_xscale("log")
    curves.set_xticks(shots, [str(k) for k in shots])
    curves.minorticks_off()
    curves.set_xlabel("pictures per class")
    curves.set_ylabel("accuracy (%)")
    curves.grid(alpha=0.3)
    if any(e.curve for e in estimates):
        curves.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        figure.savefig(handle, format="png")
    return path


def contact_sheet(images: Sequence[Image.Image | None], captions: Sequence[str], path: str | os.PathLike,
                  tile: int = 96, columns: int = 10) -> Path:
    """A PNG grid of thumbnails with a caption under each; ``None`` draws an empty grey tile (no picture file)."""
    rows = max(1, -(-len(captions) // columns))
    text_h = 24
    sheet = Image.new("RGB", (columns * tile, rows * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * tile, (i // columns) * (tile + text_h)
        if image is None:
            draw.rectangle([x + 2, y + 2, x + tile - 3, y + tile - 3], fill="#dddddd")
        else:
            thumb = image.convert("RGB")
            thumb.thumbnail((tile - 4, tile - 4))
            sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        for line, text in enumerate(caption.split("\n")[:2]):
            draw.text((x + 3, y + tile + line * 11), text[:18], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path

