"""The few-shot evaluation around the episodes: which labeled input a setting names, which rows the episodes draw
from, and the record a run writes.

The choice of input is checked before any encoder is loaded, and the rows before any image is encoded, so that a
setting the data cannot support fails in a second rather than after minutes of encoding.

Usage::

    from mmpretrain.fewshot.records import choose_input, fewshot_record, novel_rows
    data = choose_input(store="/data/emb")                    # or encoder=..., root=<labeled folder>
    novel = novel_rows(data, n_way=5, shots=[1, 5], n_query=15, n_base=None, seed=0)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mmpretrain.data.sources import describe_labels
from mmpretrain.errors import ConfigError
from mmpretrain.fewshot.inputs import ImageInput, LabeledInput, ShardImageInput, StoreInput
from mmpretrain.fewshot.sampling import sample_episodes, split_classes

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder
    from mmpretrain.fewshot.evaluate import EpisodeResult

__all__ = ["choose_input", "fewshot_record", "novel_rows"]

log = logging.getLogger(__name__)

_SUMMARY = ("mean", "ci95", "std", "episodes")


def choose_input(
    *,
    encoder: str | None = None,
    store: str | None = None,
    root: str | None = None,
    shards: str | list[str] | None = None,
    random_init: bool = False,
    batch_size: int = 64,
    make_encoder: Callable[[], ImageEncoder] | None = None,
) -> LabeledInput:
    """The labeled rows a few-shot run names: ``store=``, or ``encoder=`` with ``data.root=`` or ``data.shards=``.

    ``make_encoder`` builds the encoder named by ``encoder`` and is called only once the combination is valid.

    Raises:
        ConfigError: a combination that names no input, or two, naming the keys.
    """
    if root and shards:
        raise ConfigError(f"task=fewshot: give data.root=... or data.shards=..., not both (data.root={root}, "
                          f"data.shards={shards})")
    if store:
        if encoder or root or shards:
            raise ConfigError(f"task=fewshot: give store=... or encoder=... with data.root=..., not both "
                              f"(store={store}, encoder={encoder}, data.root={root or shards})")
        if random_init:
            raise ConfigError(f"random_init=true needs encoder=...: store={store} holds fixed embeddings")
        return StoreInput(store)
    if not encoder or make_encoder is None:
        raise ConfigError("task=fewshot needs encoder=<checkpoint|name|path> with data.root=<labeled folder, file "
                          "list or manifest>, or store=<embedding store with a label column>")
    if shards:
        return ShardImageInput(make_encoder(), shards, batch_size=batch_size)
    if not root:
        raise ConfigError(f"task=fewshot encoder={encoder} needs data.root=<labeled folder (one subfolder per "
                          "class), file list or manifest> or data.shards=<labelled shards> holding the images to "
                          "evaluate on")
    data = ImageInput(make_encoder(), root, batch_size=batch_size)
    if data.images.kind == "labeled folder":
        line, warning = describe_labels(list(data.labels), f"the subfolders of data.root={root}")
        log.info("%s", line)
        if warning:
            log.warning(warning)
    return data


def novel_rows(
    data: LabeledInput, *, n_way: int, shots: Sequence[int], n_query: int, n_base: int | None, seed: int
) -> np.ndarray:
    """Rows episodes are drawn from (all, or those outside the ``n_base`` base classes), after checking that they
    can supply the episodes at the largest shot count.

    Raises:
        ConfigError: too few classes or rows per class for the setting, naming the input and the setting.
    """
    novel = np.ones(len(data.labels), dtype=bool)
    if n_base is not None:
        try:
            novel = split_classes(data.labels, n_base, seed=seed)[1]
        except ValueError as err:
            raise ConfigError(f"{data.where}: n_base={n_base}: {err}") from err
    try:  # the largest shot count is the one the labels may fail to supply
        sample_episodes(data.labels[novel], n_way, max(shots), n_query, episodes=1, seed=seed)
    except ValueError as err:
        raise ConfigError(f"{data.where}: n_way={n_way} n_shot={list(shots)} n_query={n_query}: {err}") from err
    return novel


def fewshot_record(
    data: LabeledInput,
    novel: np.ndarray,
    results: Mapping[str, Mapping[int, EpisodeResult]],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """What ``fewshot.json`` holds: the setting, the classes used, and mean/ci95/std/episodes per method and shot.

    ``settings`` holds ``random_init``, ``n_way``, ``n_query``, ``episodes``, ``seed`` and ``n_base``.
    """
    return {
        "task": "fewshot",
        "source": data.where,
        "encoder": data.encoder_name,
        "random_init": bool(settings["random_init"]),
        "n_way": settings["n_way"],
        "n_query": settings["n_query"],
        "episodes": settings["episodes"],
        "seed": settings["seed"],
        "rows": int(novel.sum()),
        "classes": len(np.unique(data.labels[novel])),
        "n_base": settings["n_base"],
        "base_classes": sorted(map(str, np.unique(data.labels[~novel]))),
        "results": {
            method: {str(shot): {key: r.to_dict()[key] for key in _SUMMARY} for shot, r in by_shot.items()}
            for method, by_shot in results.items()
        },
    }
