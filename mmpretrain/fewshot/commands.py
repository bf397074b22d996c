"""The bodies of ``mmpretrain-fewshot predict|estimate|suggest``, callable from Python with the same arguments.

Usage::

    from mmpretrain.fewshot import estimate, predict_files, suggest
    predict_files("my_classifier", "new_pictures/", "preds.jsonl")
    estimate("labelled/", ["my.ckpt", "timm:resnet18", "random:my.ckpt", "pixels"], "estimate/")
    suggest("my_classifier", "unlabelled/", "suggest/", n=50)
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmpretrain._io import atomic_path, write_text_atomic
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.fewshot.encoding import open_encoder
from mmpretrain.fewshot.holdout import SHOTS, Estimate, estimate_embeddings
from mmpretrain.fewshot.model import FewShotModel, load_classifier
from mmpretrain.fewshot.plots import contact_sheet, plot_estimates
from mmpretrain.fewshot.selection import margins, select
from mmpretrain.fewshot.sources import is_store, labeled_support, open_picture, read_rows

log = logging.getLogger(__name__)

__all__ = ["estimate", "estimate_table", "predict_files", "suggest"]


def _model(classifier: str | os.PathLike | FewShotModel) -> FewShotModel:
    return classifier if isinstance(classifier, FewShotModel) else load_classifier(classifier)


def _store_rows(source: Any, model: FewShotModel, key: str) -> tuple[list[str], list[str | None], np.ndarray]:
    """Ids, paths (None without a ``path`` column) and embeddings of a store, as the classifier reads them.

    Raises:
        ConfigError: embeddings of another width, or L2-normalised rows for a classifier fitted on raw ones.
    """
    from mmpretrain.embeddings import open_store

    store = open_store(source)
    if store.dim != model.encoder.embed_dim:
        raise ConfigError(f"{key}={source}: the store holds {store.dim}-d embeddings ({store.encoder}), the "
                          f"classifier's encoder {model.encoder.name} gives {model.encoder.embed_dim}-d ones")
    if store.normalized and not model.normalized:
        raise ConfigError(f"{key}={source}: the store holds L2-normalised rows, the classifier reads raw embeddings "
                          "(centering comes first); extract the store with normalize=false")
    meta = store.metadata()
    ids = [str(i) for i in meta.column("id").to_pylist()]
    paths = meta.column("path").to_pylist() if "path" in meta.column_names else [None] * len(ids)
    embeddings = store.embeddings()
    if model.normalized and not store.normalized:
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True).clip(min=1e-12)
    return ids, paths, embeddings


def predict_files(classifier: str | os.PathLike | FewShotModel, input: Any, output: str | os.PathLike,
                  top_k: int = 5, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Classify every picture of ``input`` and write one JSON line per picture to ``output`` (atomically).

    ``input`` is a folder, file list, manifest, shards, one picture, a list of pictures, or an embedding store made
    with the classifier's encoder. Each line: ``{"id", "path", "labels": [{"label", "p"}, ...top_k], "predicted":
    class or "unknown", "similarity"}``. Returns a summary: ``count``, ``unknown`` and the count per predicted class.
    """
    model = _model(classifier)
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    if is_store(input):
        ids, paths, embeddings = _store_rows(input, model, "input")
        batches = ((start, embeddings[start:start + batch_size]) for start in range(0, len(ids), batch_size))
        predict = model.predict_embeddings
    else:
        rows = read_rows(input)
        ids, paths, batches = rows.ids, rows.paths, rows.batches(batch_size)
        predict = functools.partial(model.predict, batch_size=batch_size)
    output = Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    failed: list[dict[str, Any]] = []
    bar = tqdm(total=len(ids), desc="predict", unit="img", disable=not progress)
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for start, batch in batches:
            end = start + len(batch)
            for record in _batch_records(predict, batch, ids[start:end], paths[start:end], top_k):
                out.write(json.dumps(record) + "\n")
                if "error" in record:
                    failed.append(record)
                else:
                    counts[record["predicted"]] = counts.get(record["predicted"], 0) + 1
            bar.update(len(batch))
    bar.close()
    total = sum(counts.values()) + len(failed)
    if total != len(ids):
        raise DataError(f"input={input}: {len(ids)} pictures listed but {total} read (the input changed)")
    if failed:
        raise DataError(f"input={input}: {len(failed)} of {total} pictures could not be read; their lines in "
                        f"{output} carry an \"error\" (first: {failed[0]['path']}: {failed[0]['error']})")
    return {"output": str(output), "count": total, "unknown": counts.get("unknown", 0), "predicted": counts}


def _batch_records(predict: Any, batch: Any, ids: Sequence[str], paths: Sequence[str | None], k: int,
                   ) -> list[dict[str, Any]]:
    """The records of a batch; when a picture cannot be read, the others one by one and an ``error`` record for it
    (so one damaged file costs its own line, not the run's)."""
    try:
        return predict(batch).records(ids, paths, k=k)
    except DataError:
        records = []
        for item, item_id, path in zip(batch, ids, paths):
            try:
                records += predict([item]).records([item_id], [path], k=k)
            except DataError as err:
                log.warning("%s: %s", path or item_id, err)
                records.append({"id": item_id, "path": path, "error": str(err).removeprefix("images[0]: ")})
        return records


def estimate_table(estimates: Sequence[Estimate]) -> str:
    """A Markdown table: one row per encoder, accuracy and CI, then accuracy at each measured shot."""
    shots = sorted({p["shots"] for e in estimates for p in e.curve})
    header = ["encoder", "method", "held-out accuracy (%)", "95% CI", *[f"{k}-shot" for k in shots]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for e in estimates:
        at = {p["shots"]: f"{p['accuracy']:.1f} ± {p['ci95']:.1f}" for p in e.curve}
        cells = [e.encoder, e.method, f"{e.accuracy:.1f}", f"{e.ci95[0]:.1f}–{e.ci95[1]:.1f}",
                 *[at.get(k, "-") for k in shots]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def estimate(support: Any, encoders: Sequence[str], output: str | os.PathLike | None = None,
             method: str = "simpleshot", shots: Sequence[int] = SHOTS, trials: int = 20, seed: int = 0,
             batch_size: int = 64, device: str | None = None, **options: Any) -> list[Estimate]:
    """Estimate each encoder on the labelled ``support`` set (see :mod:`mmpretrain.fewshot.holdout`).

    With ``output``, writes ``estimate.json`` (every figure, confusion matrices included), ``estimate.md`` (the
    table) and ``estimate.png`` (accuracy with CI and learning curves, encoders side by side).

    Args:
        support: a labelled folder, file list, manifest, shards or an embedding store (then ``encoders`` may be
            empty: the store's embeddings are estimated as they are).
        encoders: encoder specs (see :mod:`mmpretrain.fewshot.encoding`).
    """
    if not encoders and not is_store(support):
        raise ConfigError("estimate needs encoder=[<spec>,...] (a checkpoint, timm:<model>, random:<spec>, pixels)")
    if encoders and is_store(support):
        raise ConfigError(f"support={support} is an embedding store: it holds one encoder's embeddings, which are "
                          "estimated as they are; leave encoder= out, or give labelled pictures to compare encoders")
    results = []
    for spec in encoders or [None]:
        handle = open_encoder(spec, device=device) if spec is not None else None
        data = labeled_support(support, handle.encoder if handle else None, batch_size=batch_size)
        name = handle.encoder.name if handle else data.where
        log.info("estimating %s on %d pictures", name, len(data.labels))
        results.append(estimate_embeddings(data.features, data.labels, method, encoder=name, shots=shots,
                                           trials=trials, seed=seed, random_init=bool(handle and handle.random_init),
                                           **options))
    if output is not None:
        out = Path(output).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        record = {"support": str(support), "method": method, "estimates": [e.to_dict() for e in results]}
        write_text_atomic(out / "estimate.json", json.dumps(record, indent=2) + "\n")
        write_text_atomic(out / "estimate.md", estimate_table(results) + "\n")
        plot_estimates(results, out / "estimate.png")
    return results


def suggest(classifier: str | os.PathLike | FewShotModel, pool: Any, output: str | os.PathLike, n: int = 50,
            weight: float = 0.5, batch_size: int = 64, progress: bool = True) -> list[dict[str, Any]]:
    """Pick ``n`` pictures of an unlabelled ``pool`` to label next (see :mod:`mmpretrain.fewshot.selection`).

    Writes ``output/suggest.jsonl`` (``rank``, ``id``, ``path``, ``predicted``, ``margin``, ``distance``, top
    ``labels``) and ``output/suggest.png`` (a contact sheet in the same order), and returns the records.

    Pictures the classifier was fitted on (by path) are never suggested.

    Args:
        pool: an unlabelled folder, file list, manifest, shards, or an embedding store made with the classifier's
            encoder.
    """
    model = _model(classifier)
    if is_store(pool):
        ids, paths, embeddings = _store_rows(pool, model, "pool")
        rows = None
    else:
        rows = read_rows(pool, key="pool")
        ids, paths = rows.ids, rows.paths
        bar = tqdm(total=len(rows), desc="embed pool", unit="img", disable=not progress)
        parts = []
        for _, images in rows.batches(batch_size):
            parts.append(model.embed(images, batch_size))
            bar.update(len(images))
        bar.close()
        embeddings = np.concatenate(parts)
    result = model.predict_embeddings(embeddings)
    margin = margins(result.probabilities)
    clf = model.classifier
    labelled = {p for p in (model.info.get("support") or {}).get("paths") or [] if p}
    exclude = np.array([p in labelled for p in paths], dtype=bool)
    picked, distance = select(embeddings, margin, clf.support_features.numpy(), n, weight, clf.base_mean.numpy(),
                              exclude)
    tops = result.top(3)
    records = [{"rank": rank + 1, "id": ids[row], "path": paths[row], "predicted": result.predicted[row],
                "margin": round(float(margin[row]), 6), "distance": round(float(d), 6),
                "labels": [{"label": c, "p": round(p, 6)} for c, p in tops[row]]}
               for rank, (row, d) in enumerate(zip(picked, distance))]
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "suggest.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    thumbs = rows.pictures(picked) if rows is not None else [open_picture(r["path"]) for r in records]
    contact_sheet(thumbs, [f"{r['rank']}. {r['predicted']}\nmargin {r['margin']:.2f}" for r in records],
                  out / "suggest.png")
    return records

