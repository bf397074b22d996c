"""`mmpretrain-eval task=<knn|linear> encoder=<checkpoint> data.train_root=... data.val_root=...` (or labelled shards:
`data.shards=... data.val_shards=...`), `mmpretrain-eval task=fewshot encoder=<checkpoint> data.root=<labeled images>
n_way=5 n_shot=[1,5]` (or `data.shards=`, or `store=`), and
`mmpretrain-eval task=retrieval encoder=<video checkpoint> data.manifest=<held-out videos>`."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, open_dict
from pytorch_lightning.loggers import WandbLogger

from mmpretrain.cli.entry import print_outputs, run_hydra, run_outputs, short_errors
from mmpretrain.cli.run_folder import in_sweep, refresh_config, write_metrics
from mmpretrain.cli.utils import (
    apply_extras,
    check_trainer,
    get_metric_value,
    instantiate,
    instantiate_loggers,
    log_hyperparameters,
    task_wrapper,
)
from mmpretrain.data import loader_pin_memory, loader_workers
from mmpretrain.encoders import ImageEncoder, load_encoder
from mmpretrain.errors import ConfigError
from mmpretrain.fewshot import (
    evaluate_episodes,
    get_method,
    log_results_to_wandb,
    plot_accuracy_vs_shots,
    results_table,
)
from mmpretrain.fewshot.inputs import LabeledInput
from mmpretrain.fewshot.records import choose_input, fewshot_record, novel_rows
from mmpretrain.hub import build_model, load_checkpoint
from mmpretrain.hub.formats import is_video
from mmpretrain.ssl import knn_evaluate, linear_evaluate

log = logging.getLogger(__name__)


def load_eval_backbone(source: str, random_init: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's backbone, or the same architecture at (seeded) random init, and its preprocessing."""
    loaded = load_checkpoint(source, random_init=random_init)  # a random timm:<model> fetches nothing
    if is_video(loaded.config):
        raise ConfigError(f"encoder={source} is a video–text model; task=knn, linear and fewshot evaluate image "
                          "backbones: use task=retrieval (data.manifest=...), or extract a store with "
                          "mmpretrain-extract and evaluate it with task=probe or task=fewshot store=...")
    return build_model(loaded, random_init), loaded.config["preprocessing"]


def _device(trainer_cfg: DictConfig) -> str:
    wants_gpu = trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def _log_metrics(loggers: list[pl.loggers.Logger], metrics: dict[str, float]) -> None:
    """Send the metrics to every logger and flush them (nothing else ends these loggers outside a Trainer)."""
    for logger in loggers:
        logger.log_metrics(metrics)
        logger.save()


def _as_list(cfg: DictConfig, key: str) -> list[Any]:
    """`cfg[key]` as a list, written back so that `n_shot=5` reads as `n_shot=[5]` everywhere (optimized_metric)."""
    value = cfg[key]
    items = list(value) if isinstance(value, ListConfig) else [value]
    if not items:
        raise ConfigError(f"{key}=[] is empty; give at least one value")
    cfg[key] = items
    return items


def _fewshot_encoder(cfg: DictConfig, device: str) -> ImageEncoder:
    """The encoder named by `cfg.encoder`, or its architecture at (seeded) random init, as for knn."""
    if not cfg.random_init:
        return load_encoder(str(cfg.encoder), device=device)
    backbone, prep = load_eval_backbone(str(cfg.encoder), random_init=True)
    return ImageEncoder(backbone, prep, f"{cfg.encoder} (random init)", device=device)


def _fewshot_input(cfg: DictConfig, device: str) -> LabeledInput:
    """The labeled rows `store=`, or `encoder=` with `data.root=` / `data.shards=`, name."""
    shards = cfg.data.get("shards")
    return choose_input(encoder=cfg.get("encoder"), store=cfg.get("store"), root=cfg.data.get("root"),
                        shards=list(shards) if isinstance(shards, ListConfig) else shards,
                        random_init=bool(cfg.random_init), batch_size=cfg.data.batch_size,
                        make_encoder=lambda: _fewshot_encoder(cfg, device))


def _fewshot(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Episodic few-shot evaluation; writes fewshot.json, fewshot_table.txt and fewshot.png into the run folder."""
    shots, methods = _as_list(cfg, "n_shot"), _as_list(cfg, "methods")
    for method in methods:
        try:
            get_method(method)
        except ValueError as err:
            raise ConfigError(f"methods={methods}: {err}") from err
    device = _device(cfg.trainer)
    data = _fewshot_input(cfg, device)
    novel = novel_rows(data, n_way=cfg.n_way, shots=shots, n_query=cfg.n_query, n_base=cfg.n_base, seed=cfg.seed)
    features = data.features()
    base_features = None if cfg.n_base is None else features[~novel]
    results = {
        method: evaluate_episodes(features[novel], data.labels[novel], cfg.n_way, shots, cfg.n_query, cfg.episodes,
                                  method, cfg.seed, base_features=base_features, device=device,
                                  progress=cfg.get("progress", True))
        for method in methods
    }
    metrics = {}
    for method, by_shot in results.items():
        for shot, result in by_shot.items():
            metrics[f"fewshot/{method}/{cfg.n_way}way_{shot}shot/acc"] = result.mean
            metrics[f"fewshot/{method}/{cfg.n_way}way_{shot}shot/ci95"] = result.ci95

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {key: cfg[key] for key in ("random_init", "n_way", "n_query", "episodes", "seed", "n_base")}
    record = fewshot_record(data, novel, results, settings)
    table = results_table(results)
    record = write_metrics(out, record, "fewshot.json")
    (out / "fewshot_table.txt").write_text(table + "\n")
    if cfg.plot:
        plot_accuracy_vs_shots(results, out / "fewshot.png")
    loggers = instantiate_loggers(cfg.get("logger"))
    log_hyperparameters(cfg, loggers)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            log_results_to_wandb(results, run=logger.experiment)  # a table, the plot and the same scalars
        else:
            _log_metrics([logger], metrics)
    print(table)
    print(json.dumps(record))
    return metrics, {"features": features[novel], "labels": data.labels[novel], "results": results, "input": data}


def _retrieval(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Text↔video retrieval of a video model (or its random-init twin) on a held-out manifest."""
    from mmpretrain.encoders import VideoEncoder
    from mmpretrain.hub.formats import is_video
    from mmpretrain.video import read_video_manifest
    from mmpretrain.video.eval.evaluation import video_text_retrieval

    loaded = load_checkpoint(str(cfg.encoder))
    if not is_video(loaded.config):
        raise ConfigError(f"task=retrieval needs a video–text model; encoder={cfg.encoder} is an image backbone")
    model = build_model(loaded, random_init=bool(cfg.random_init))
    name = loaded.config.get("name") or str(cfg.encoder)
    encoder = VideoEncoder(model, loaded.config, name, device=_device(cfg.trainer), backend=cfg.data.backend)
    records = read_video_manifest(cfg.data.manifest)
    task = cfg.task
    result = video_text_retrieval(encoder, records, ks=list(task.ks), shortlist=task.shortlist,
                                  rerank_k=task.rerank_k, index_key=task.index_key,
                                  batch_size=cfg.data.batch_size)
    metrics = {"retrieval/vtm_acc": result["vtm_accuracy"], "retrieval/vtm_acc_hard": result["vtm_accuracy_hard"]}
    for direction in ("t2v", "v2t", "t2v_rerank"):
        metrics |= {f"retrieval/{direction}_{k}": float(v) for k, v in result.get(direction, {}).items()}
    loggers = instantiate_loggers(cfg.get("logger"))
    log_hyperparameters(cfg, loggers)
    _log_metrics(loggers, metrics)
    _write_record(cfg, {"task": "retrieval", "encoder": str(cfg.encoder), "random_init": bool(cfg.random_init),
                        "manifest": str(cfg.data.manifest), **result})
    return metrics, {"encoder": encoder, "result": result}


def _write_record(cfg: DictConfig, record: dict[str, Any]) -> None:
    print(json.dumps(write_metrics(cfg.paths.output_dir, record)))


def _probe(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """A linear probe on two embedding stores (labels or tags from their metadata)."""
    from mmpretrain.video.eval.store_probe import probe_store

    result = probe_store(cfg.train_store, cfg.val_store, cfg.probe_task, epochs=cfg.epochs, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, seed=cfg.seed, progress=True)
    scalars = {k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    metrics = {f"probe/{k}": v for k, v in scalars.items()}
    metrics["probe/score"] = scalars["top1" if cfg.probe_task == "classify" else "mAP"]
    loggers = instantiate_loggers(cfg.get("logger"))
    log_hyperparameters(cfg, loggers)
    _log_metrics(loggers, metrics)
    _write_record(cfg, {"task": "probe", "probe_task": cfg.probe_task, "train_store": str(cfg.train_store),
                        "val_store": str(cfg.val_store), **scalars})
    return metrics, {"result": result}


def _predict(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """JSON Lines predictions of a fine-tuned video classifier/tagger on a manifest."""
    from torch.utils.data import DataLoader

    from mmpretrain.models import tokenizer_from_json
    from mmpretrain.video import TextProcessor, VideoCollator, VideoFinetune, VideoTextDataset, read_video_manifest
    from mmpretrain.video.train.finetune import write_predictions

    try:
        module = VideoFinetune.load_from_checkpoint(str(cfg.encoder), map_location="cpu")
    except (KeyError, TypeError) as err:
        raise ConfigError(f"task=predict needs a fine-tuning checkpoint (experiment=video_classify or "
                         f"video_tagging); encoder={cfg.encoder} is not one: {err}") from err
    config = module.video_config
    pre = config["preprocessing"]
    dataset = VideoTextDataset(read_video_manifest(cfg.data.manifest), num_frames=pre["num_frames"],
                               size=(pre["image_size"], pre["image_size"]), train=False,
                               backend=cfg.data.backend)
    processor = TextProcessor(tokenizer_from_json(config["tokenizer"]), int(pre.get("max_text_len", 64)))
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, collate_fn=VideoCollator(processor),
                        num_workers=loader_workers(cfg.data.num_workers),
                        pin_memory=loader_pin_memory(cfg.data.pin_memory))
    check_trainer(cfg.trainer)
    trainer: pl.Trainer = instantiate(cfg.trainer, "trainer", devices=1, logger=False, enable_checkpointing=False)
    path = Path(cfg.task.output or Path(cfg.paths.output_dir) / "predictions.jsonl")
    count = write_predictions(trainer, module, loader, path, top_k=cfg.task.top_k)
    log.info("wrote %d predictions to %s", count, path)
    _write_record(cfg, {"task": "predict", "encoder": str(cfg.encoder), "manifest": str(cfg.data.manifest),
                        "predictions": str(path), "count": count})
    return {"predict/count": float(count)}, {"path": path}


def _frozen_backbone(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """kNN or a linear probe of the checkpoint's backbone on a labeled train/val pair; writes metrics.json."""
    backbone, prep = load_eval_backbone(str(cfg.encoder), bool(cfg.random_init))
    with open_dict(cfg):  # the checkpoint's preprocessing, shown as such in config.yaml and the loggers
        cfg.data.image_size, cfg.data.mean, cfg.data.std = prep["image_size"], list(prep["mean"]), list(prep["std"])
        cfg.data.eval_crop_pct = prep.get("crop_pct", 0.875)
    log.info("preprocessing of encoder=%s: data.image_size=%s data.eval_crop_pct=%s", cfg.encoder,
             cfg.data.image_size, cfg.data.eval_crop_pct)
    refresh_config(cfg)
    datamodule = instantiate(cfg.data, "data")
    loggers = instantiate_loggers(cfg.get("logger"))
    log_hyperparameters(cfg, loggers)
    trainer = None
    if cfg.task.name == "knn":
        metrics = knn_evaluate(backbone, datamodule, _device(cfg.trainer), k=cfg.task.k,
                               temperature=cfg.task.temperature)
        _log_metrics(loggers, metrics)
    else:
        check_trainer(cfg.trainer)
        trainer = instantiate(cfg.trainer, "trainer", logger=loggers or False, enable_checkpointing=False)
        metrics = linear_evaluate(backbone, datamodule, trainer, cfg.task)
    _write_record(cfg, {"task": cfg.task.name, "encoder": str(cfg.encoder), "random_init": bool(cfg.random_init),
                        **metrics})
    return metrics, {"backbone": backbone, "datamodule": datamodule, "trainer": trainer}


#: task name -> the function that runs it (lightning-hydra-template's shape: one entry per task config)
TASKS: dict[str, Callable[[DictConfig], tuple[dict[str, float], dict[str, Any]]]] = {
    "knn": _frozen_backbone,
    "linear": _frozen_backbone,
    "fewshot": _fewshot,
    "retrieval": _retrieval,
    "probe": _probe,
    "predict": _predict,
}


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Score a frozen encoder: kNN or a linear probe on a labeled train/val pair (writes `metrics.json`), few-shot
    episodes on one labeled set or embedding store (writes `fewshot.json`, a table and a plot), or video–text
    retrieval on a held-out video manifest (writes `metrics.json`)."""
    apply_extras(cfg)
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"task={name} is not available here; choose one of {tuple(TASKS)}")
    pl.seed_everything(cfg.seed, workers=True)
    return TASKS[name](cfg)


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="eval.yaml")
@short_errors("mmpretrain-eval")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Hydra's entry; returns `optimized_metric` (knn/linear: top-1; fewshot: the first method at the first K)."""
    metrics, _ = evaluate(cfg)
    print_outputs("mmpretrain-eval", run_outputs(cfg.paths.output_dir))
    return get_metric_value(metrics, cfg.get("optimized_metric"), required=in_sweep())


def main(argv: list[str] | None = None) -> None:
    """Console entry: `--version`, `--help`, short errors and "did you mean" around Hydra."""
    run_hydra("mmpretrain-eval", "eval.yaml", _hydra_main, argv)


if __name__ == "__main__":
    main()
