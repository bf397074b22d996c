"""Reporting few-shot results: a text table, a PNG of accuracy against shots, and W&B logging."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpretrain.fewshot.evaluate import EpisodeResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["flatten_results", "log_results_to_wandb", "plot_accuracy_vs_shots", "results_table"]

Results = EpisodeResult | Iterable[Any] | Mapping[Any, Any]
"""One result, or any nesting of lists and dicts of results (e.g. ``{method: {n_shot: result}}``)."""

_COLUMNS = ["method", "n_way", "n_shot", "n_query", "episodes", "accuracy", "ci95"]


def flatten_results(results: Results) -> list[EpisodeResult]:
    """All :class:`EpisodeResult` in a nesting of lists and dicts, sorted by method, ways and shots."""
    found: list[EpisodeResult] = []
    stack = [results]
    while stack:
        item = stack.pop()
        if isinstance(item, EpisodeResult):
            found.append(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, Iterable) and not isinstance(item, str | bytes):
            stack.extend(item)
        else:
            raise TypeError(f"expected EpisodeResult or a list/dict of them, got {type(item).__name__}")
    return sorted(found, key=lambda r: (r.method, r.n_way, r.n_shot, r.n_query))


def results_table(results: Results) -> str:
    """A Markdown table, one row per result: method, ways, shots, queries, episodes, accuracy ± 95% CI in %."""
    header = ["method", "way", "shot", "query", "episodes", "accuracy (%)"]
    rows = [[r.method, str(r.n_way), str(r.n_shot), str(r.n_query), str(r.episodes),
             f"{r.mean:.2f} ± {r.ci95:.2f}"] for r in flatten_results(results)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def _figure(results: Results) -> Figure:
    """Accuracy (%) against shots with 95% CI error bars, one line per method and N-way/Q-query setting.

    Matplotlib is imported here, not at module level, so evaluation never pays for it; the figure is drawn on an
    Agg canvas directly, without pyplot's global state or a display.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flat = flatten_results(results)
    if not flat:
        raise ValueError("no few-shot results to plot")
    figure = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    settings = sorted({(r.n_way, r.n_query) for r in flat})
    for method in sorted({r.method for r in flat}):
        for n_way, n_query in settings:
            line = [r for r in flat if (r.method, r.n_way, r.n_query) == (method, n_way, n_query)]
            if not line:
                continue
            label = method if len(settings) == 1 else f"{method} ({n_way}-way)"
            axes.errorbar([r.n_shot for r in line], [r.mean for r in line],
                          yerr=[r.ci95 for r in line], marker="o", capsize=3, label=label)
    shots = sorted({r.n_shot for r in flat})
    axes.set_xticks(shots)
    axes.set_xlabel("shots per class")
    axes.set_ylabel("accuracy (%) ± 95% CI")
    ways = sorted({r.n_way for r in flat})
    axes.set_title(f"{'/'.join(map(str, ways))}-way few-shot accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_accuracy_vs_shots(results: Results, path: str | os.PathLike) -> Path:
    """Write a PNG of accuracy against shots per method (matplotlib Agg, no display needed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _figure(results)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def log_results_to_wandb(results: Results, run: Any = None, key: str = "fewshot") -> bool:
    """Log a ``wandb.Table`` of the results, the accuracy-vs-shots plot and one scalar per result.

    Scalars are named ``{key}/{method}/{N}way_{K}shot/acc`` and ``.../ci95`` so they land in the run summary.

    Args:
        results: results as accepted by :func:`flatten_results`.
        run: a W&B run; default the active one (``wandb.run``).
        key: prefix of the logged names.

    Returns:
        Whether anything was logged: without a run this logs an info message and does nothing.
    """
    import wandb

    run = run if run is not None else wandb.run
    if run is None:
        logger.info("No active W&B run: few-shot results not logged to W&B (call wandb.init() first)")
        return False
    flat = flatten_results(results)
    table = wandb.Table(columns=_COLUMNS, data=[[r.method, r.n_way, r.n_shot, r.n_query, r.episodes, r.mean, r.ci95]
                                                 for r in flat])
    canvas = _figure(flat).canvas
    canvas.draw()
    payload: dict[str, Any] = {f"{key}/results": table,
                               f"{key}/accuracy_vs_shots": wandb.Image(np.asarray(canvas.buffer_rgba())[..., :3])}
    for r in flat:
        name = f"{key}/{r.method}/{r.n_way}way_{r.n_shot}shot"
        payload[f"{name}/acc"] = r.mean
        payload[f"{name}/ci95"] = r.ci95
    run.log(payload)
    return True
