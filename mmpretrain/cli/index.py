"""`mmpretrain-index build|search|eval key=value ...`: FAISS indexes over an embedding store.

The subcommand is the first argument; it becomes the `command` key and the rest are Hydra overrides of
`conf/index.yaml`::

    mmpretrain-index build store=/data/emb output=/data/idx memory_budget=8GB
    mmpretrain-index search index=/data/idx query=cat.jpg k=10
    mmpretrain-index eval index=/data/idx queries=1000 sweep=true
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from mmpretrain.cli.entry import print_outputs, run_outputs, run_subcommand, short_errors
from mmpretrain.cli.run_folder import write_metrics
from mmpretrain.cli.utils import apply_extras, task_wrapper
from mmpretrain.data.sources import IMAGE_EXTENSIONS, scan_images
from mmpretrain.embeddings import MANIFEST, StoreError
from mmpretrain.encoders import Encoder, load_encoder
from mmpretrain.errors import ConfigError, MissingPathError, NotAFolderError, PathExistsError
from mmpretrain.models import coverage_warning
from mmpretrain.retrieval import (
    PARAMS_FILE,
    RetrievalIndex,
    build_index_from_store,
    evaluate_index,
    load_index,
    load_query_embeddings,
    parse_memory,
    plot_recall_qps,
    resolve_queries,
)
from mmpretrain.video import VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

COMMANDS = ("build", "search", "eval")
USAGE = """usage: mmpretrain-index {build|search|eval} key=value ...
  mmpretrain-index build store=<embedding store> output=<index folder> [memory_budget=8GB] [index_key=auto]
  mmpretrain-index search index=<index folder> query=<image|video|folder|[a.jpg,b.jpg]|file.npy> [k=10]
  mmpretrain-index search index=<index folder> --text "a red circle, moving left" [k=10] [encoder=...]
  mmpretrain-index eval index=<index folder> [queries=1000|file.npy] [k=10] [sweep=true]"""
SUPPORTED_QUERIES = ("supported: query=<image or video file, folder of images, list of images or videos, or .npy "
                     "file of embeddings>, or text=<text or [list of texts]> on a store of video (VTC) embeddings")


# ---------------------------------------------------------------------------------------------------- arguments


def _required(cfg: DictConfig, key: str, what: str) -> str:
    """`cfg[key]` as a string, or an error naming the key the subcommand needs."""
    value = cfg.get(key)
    if value is None or str(value) == "":
        raise ConfigError(f"mmpretrain-index {cfg.command} needs {key}=<{what}>")
    return str(value)


def _folder(value: str, key: str) -> Path:
    """An existing folder given as `key=value`, or an error naming both."""
    path = Path(value).expanduser()
    if not path.exists():
        raise MissingPathError(f"{key}={value}: folder does not exist")
    if not path.is_dir():
        raise NotAFolderError(f"{key}={value}: not a folder")
    return path


def _check_output(output: Path) -> None:
    """Refuse to replace anything but an earlier index: saving swaps the whole folder and deletes the old one."""
    if output.is_file() or (output.is_dir() and any(output.iterdir()) and not (output / PARAMS_FILE).is_file()):
        raise PathExistsError(f"output={output}: exists and is not an index folder (no {PARAMS_FILE}); saving would "
                              "replace it, so choose a new folder")


def _load(cfg: DictConfig) -> RetrievalIndex:
    """The index at `index=`, paired with `store=` when given, else with the store it was built from."""
    path = _folder(_required(cfg, "index", "index folder written by mmpretrain-index build"), "index")
    store = _folder(str(cfg.store), "store") if cfg.get("store") else None
    index = load_index(path, store=store, use_gpu=cfg.use_gpu)
    log.info("loaded %r from %s (store %s)", index, path, index.store.root if index.store is not None else None)
    return index


def _need_store(index: RetrievalIndex, cfg: DictConfig, why: str) -> None:
    """Stop with the remedy when the store the index was built from is not attached (moved or deleted)."""
    if index.store is None:
        raise MissingPathError(f"index={cfg.index}: {why} needs the embedding store it was built from "
                                f"({index.store_path}), which is gone; pass store=<its new folder>")


# ---------------------------------------------------------------------------------------------------- queries


def _query_items(cfg: DictConfig) -> list[str]:
    """The `query=` value as a list of paths (a list, a comma-separated string or one path)."""
    query = cfg.get("query")
    items = [str(q) for q in query] if isinstance(query, ListConfig) else str(query or "").split(",")
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError(f"mmpretrain-index search needs query=<...> or text=<...>; {SUPPORTED_QUERIES}")
    return items


def _text_items(cfg: DictConfig) -> list[str]:
    """The `text=` value as a list of query texts (a list or one text; commas stay inside a text)."""
    text = cfg.get("text")
    items = [str(t) for t in text] if isinstance(text, ListConfig) else [str(text)]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError(f"text={text!r} is empty; {SUPPORTED_QUERIES}")
    return items


def _store_encoder(cfg: DictConfig, index: RetrievalIndex, kind: str) -> Encoder:
    """`encoder=` or the store's own encoder, checked to embed `kind` queries into the index's space."""
    _need_store(index, cfg, f"a {kind} query (for the store's encoder and normalization)")
    store = index.store
    source = cfg.encoder or store.manifest.get("extra", {}).get("encoder_source") or store.encoder
    if not cfg.encoder and urllib.parse.urlparse(str(source)).scheme in ("http", "https"):
        raise StoreError(f"{store.root / MANIFEST}: names encoder {source!r}, a URL; a data file does not decide "
                         f"what is downloaded: pass encoder={source} yourself to fetch it")
    random_init = not cfg.encoder and bool(store.manifest.get("extra", {}).get("random_init"))
    try:
        encoder = load_encoder(str(source), random_init=random_init)  # a random-init store's queries: the same
    except FileNotFoundError as exc:
        if cfg.encoder:
            raise
        raise MissingPathError(f"store {store.root} names encoder {source!r}, which is neither a registered "
                                "checkpoint nor a path here; pass encoder=<name|path|url> of the encoder that made "
                                "the store") from exc
    video = encoder.kind == "video"
    if (kind == "image" and video) or (kind in ("video", "text") and not video):
        raise ConfigError(f"encoder={source} is {'a video' if video else 'an image'} encoder; {kind} queries need "
                         f"{'an image' if kind == 'image' else 'a video-text'} encoder (the one that made the store)")
    if kind == "text":
        made_with = store.manifest.get("extra", {}).get("embedding", "vtc")
        if made_with != "vtc":
            raise ConfigError(f"store {store.root} holds {made_with!r} video embeddings; text queries live in the VTC "
                             "space: extract the store with embedding=vtc")
        dim = encoder.model.embed_dim
    else:
        dim = encoder.embed_dim
    if dim != index.dim:
        raise ConfigError(f"encoder={source} gives {dim}-d embeddings but index {cfg.index} holds "
                         f"{index.dim}-d ones; use the encoder that made store {store.root} ({store.encoder})")
    return encoder


def _encode(cfg: DictConfig, index: RetrievalIndex, items: list[str], kind: str) -> np.ndarray:
    """Embed image, video or text queries with the store's encoder, normalized as the store's rows are."""
    encoder = _store_encoder(cfg, index, kind)
    normalize = index.store.normalized
    log.info("encoding %d %s queries with %s", len(items), kind, encoder.name)
    if kind == "image":
        return encoder.encode_images(items, batch_size=cfg.image_batch_size, normalize=normalize)
    if kind == "video":
        return encoder.encode_videos(items, batch_size=cfg.video_batch_size, normalize=normalize)
    message = coverage_warning(encoder.processor.tokenizer, items, f"the text queries of {encoder.name}")
    if message:
        log.warning(message)
    return encoder.encode_texts(items, normalize=normalize)


# ---------------------------------------------------------------------------------------------------- output


def _hits(index: RetrievalIndex, scores: np.ndarray, ids: np.ndarray) -> list[list[dict[str, Any]]]:
    """Per query, its found hits as `{"rank", "score", "id"[, "path", "label"]}` (metadata when the store is there)."""
    metadata = index.metadata_for(ids) if index.store is not None else [[None] * ids.shape[1]] * len(ids)
    out = []
    for row_scores, row_ids, row_meta in zip(scores.tolist(), ids.tolist(), metadata):
        hits = []
        for rank, (score, item, meta) in enumerate(zip(row_scores, row_ids, row_meta), start=1):
            if item == "":
                continue
            hit = {"rank": rank, "score": score, "id": item}
            hit.update({key: meta[key] for key in ("path", "label") if meta and meta.get(key) is not None})
            hits.append(hit)
        out.append(hits)
    return out


def _table(name: str, hits: list[dict[str, Any]], score_name: str) -> str:
    """A fixed-width table of one query's hits; label and path columns appear when known."""
    columns = ["rank", "score", "id"] + [key for key in ("label", "path") if any(key in hit for hit in hits)]
    rows = [[score_name if c == "score" else c for c in columns]]
    rows += [[f"{hit[c]:.4f}" if c == "score" else str(hit.get(c, "")) for c in columns] for hit in hits]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = [f"query {name}"] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _folder_bytes(path: Path) -> int:
    """Bytes of the files in a folder (the index's size on disk)."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


# ---------------------------------------------------------------------------------------------------- subcommands


def _build(cfg: DictConfig) -> dict[str, Any]:
    """Build an index over `store=` in batches, tune its search parameters and save it to `output=`."""
    store = _folder(_required(cfg, "store", "embedding store folder"), "store")
    output = Path(_required(cfg, "output", "index folder to write")).expanduser()
    _check_output(output)
    parse_memory(cfg.memory_budget)  # a malformed budget fails now, even when index_key skips the auto choice
    # Hydra reads an unquoted factory string (IVF1024,Flat) as a sweep; its suggested list form is joined back
    index_key = ",".join(cfg.index_key) if isinstance(cfg.index_key, ListConfig) else str(cfg.index_key)
    tic = time.perf_counter()
    index = build_index_from_store(
        store, metric=cfg.metric, index_key=index_key, memory_budget=cfg.memory_budget,
        target_recall=cfg.target_recall, k_tune=cfg.k, batch_size=cfg.batch_size, use_gpu=cfg.use_gpu,
        seed=cfg.seed,
    )
    index.save(output)
    summary = {
        "command": "build", "output": str(output), "store": str(store), "index_key": index.index_key,
        "metric": index.metric, "ntotal": index.ntotal, "dim": index.dim, "search_params": index.search_params,
        "tuned_recall": index.tuning.get("recall"), "size_bytes": _folder_bytes(output),
        "build_seconds": round(time.perf_counter() - tic, 3),
    }
    print(json.dumps(summary))
    return summary


def _search(cfg: DictConfig) -> dict[str, Any]:
    """Top-k hits of each query, as tables (or JSON lines with `json=true`)."""
    if cfg.get("text") and cfg.get("query"):
        raise ConfigError("give query=<files> or text=<texts>, not both")
    items = _text_items(cfg) if cfg.get("text") else _query_items(cfg)
    index = _load(cfg)
    if cfg.get("text"):
        embeddings, names = _encode(cfg, index, items, "text"), items
    else:
        queries = resolve_queries(items, index.dim, {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS},
                                  expand=lambda folder: scan_images(folder, key="query").paths,
                                  supported=SUPPORTED_QUERIES)
        embeddings, names = queries.embeddings, queries.items
        if embeddings is None:
            embeddings = _encode(cfg, index, names, queries.kind)
    scores, ids = index.search(embeddings, k=cfg.k)
    results = [{"query": name, "hits": hits} for name, hits in zip(names, _hits(index, scores, ids))]
    score_name = "score" if index.metric == "ip" else "distance"
    for result in results:
        print(json.dumps(result) if cfg.json else _table(result["query"], result["hits"], score_name) + "\n")
    return {"command": "search", "results": results}


def _eval_queries(cfg: DictConfig, index: RetrievalIndex) -> np.ndarray:
    """`queries=N` store rows sampled with `seed`, or the embeddings of `queries=file.npy`."""
    queries = cfg.queries
    if isinstance(queries, int) and not isinstance(queries, bool):
        if queries < 1:
            raise ConfigError(f"queries={queries}: need at least one query")
        rng = np.random.default_rng(cfg.seed)
        rows = np.sort(rng.choice(index.store.count, size=min(queries, index.store.count), replace=False))
        return index.store.take(rows)
    path = Path(str(queries)).expanduser()
    if path.suffix.lower() != ".npy":
        raise ConfigError(f"queries={queries}: give a number of store rows to sample or a .npy file of embeddings")
    if not path.is_file():
        raise MissingPathError(f"queries={queries}: no such file")
    return load_query_embeddings(path, "queries", index.dim)


def _eval(cfg: DictConfig) -> dict[str, Any]:
    """Recall@k against exact search and QPS; writes eval.json (and recall_qps.png with `sweep=true`)."""
    index = _load(cfg)
    _need_store(index, cfg, "eval (exact search over the indexed vectors)")
    result = evaluate_index(index, _eval_queries(cfg, index), k=cfg.k, sweep=cfg.sweep)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": "eval", "index": str(cfg.index), **result}
    if cfg.sweep:
        if result["curve"]:
            title = f"{index.index_key}: recall@{cfg.k} vs QPS"
            record["plot"] = str(plot_recall_qps(result["curve"], out / "recall_qps.png", result["flat_qps"], title))
        else:
            log.warning("index %s (%s) is exact: no nprobe/efSearch to sweep, so no plot", cfg.index, index.index_key)
    print(json.dumps(write_metrics(out, record, "eval.json")))
    return record


@task_wrapper
def index_command(cfg: DictConfig) -> dict[str, Any]:
    """Run the subcommand in `cfg.command` and return what it printed, as a dict."""
    apply_extras(cfg)
    commands = {"build": _build, "search": _search, "eval": _eval}
    if cfg.command not in commands:
        raise ConfigError(f"command={cfg.command} is not one of {'|'.join(COMMANDS)}")
    return commands[cfg.command](cfg)


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="index.yaml")
@short_errors("mmpretrain-index")
def _hydra_main(cfg: DictConfig) -> None:
    """Hydra's entry: run dir, logging and overrides; the subcommand arrives as `command=`."""
    result = index_command(cfg)
    outputs = [result["output"]] if cfg.command == "build" else run_outputs(cfg.paths.output_dir)
    print_outputs("mmpretrain-index", outputs)


def main(argv: list[str] | None = None) -> None:
    """Console entry: the subcommand first, then Hydra overrides (and Hydra's flags, such as `--cfg job`)."""
    run_subcommand("mmpretrain-index", "index.yaml", _hydra_main, COMMANDS, USAGE, argv,
                   flags={"--text": "text", "--query": "query"})


if __name__ == "__main__":
    main()
