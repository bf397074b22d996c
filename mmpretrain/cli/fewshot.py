"""`mmpretrain-fewshot fit|predict|estimate|suggest|export key=value ...`: a few-shot classifier to keep and call.

The subcommand is the first argument; it becomes the `command` key and the rest are Hydra overrides of
`conf/fewshot.yaml`. The work itself lives in :mod:`mmpretrain.fewshot`::

    mmpretrain-fewshot fit support=/data/labelled encoder=timm:resnet18 output=my_classifier
    mmpretrain-fewshot predict classifier=my_classifier input=/data/new output=preds.jsonl
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from mmpretrain.cli.entry import print_outputs, run_subcommand, short_errors
from mmpretrain.cli.utils import apply_extras, task_wrapper
from mmpretrain.errors import ConfigError

log = logging.getLogger(__name__)

COMMANDS = ("fit", "predict", "estimate", "suggest", "export")
USAGE = """usage: mmpretrain-fewshot {fit|predict|estimate|suggest|export} key=value ...
  mmpretrain-fewshot fit support=<labelled pictures|store> encoder=<spec> output=<folder> [method=simpleshot]
  mmpretrain-fewshot predict classifier=<folder> input=<pictures> output=<preds.jsonl>
  mmpretrain-fewshot estimate support=<labelled pictures> encoder=[<spec>,<spec>,...] [output=<folder>]
  mmpretrain-fewshot suggest classifier=<folder> pool=<unlabelled pictures|store> [n=50] [output=<folder>]
  mmpretrain-fewshot export classifier=<folder> format=onnx|torchscript output=<file>"""


def _required(cfg: DictConfig, key: str, what: str) -> Any:
    value = cfg.get(key)
    if value is None or str(value) == "" or (isinstance(value, ListConfig) and not len(value)):
        raise ConfigError(f"mmpretrain-fewshot {cfg.command} needs {key}=<{what}>")
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def _out(cfg: DictConfig) -> Path:
    return Path(str(cfg.output)) if cfg.get("output") else Path(cfg.paths.output_dir)


def _fit(cfg: DictConfig) -> dict[str, Any]:
    from mmpretrain.fewshot import fit_classifier

    output = _required(cfg, "output", "classifier folder to write")
    model = fit_classifier(_required(cfg, "support", "labelled pictures"), cfg.encoder, output, method=cfg.method,
                           accept_rate=cfg.accept_rate, threshold=cfg.threshold, embed_encoder=cfg.embed_encoder,
                           batch_size=cfg.batch_size, device=cfg.device, views=cfg.views)
    return {"command": "fit", "output": str(output), "classes": model.classes, "method": model.method,
            "encoder": model.encoder.name, "calibration": model.calibration.to_dict(),
            "estimate": model.info.get("estimate")}


def _predict(cfg: DictConfig) -> dict[str, Any]:
    from mmpretrain.fewshot import predict_files

    summary = predict_files(_required(cfg, "classifier", "classifier folder"), _required(cfg, "input", "pictures"),
                            _required(cfg, "output", "preds.jsonl"), top_k=cfg.top_k, batch_size=cfg.batch_size,
                            progress=cfg.progress)
    return {"command": "predict", **summary}


def _estimate(cfg: DictConfig) -> dict[str, Any]:
    from mmpretrain.fewshot import estimate, estimate_table

    encoders = cfg.encoder
    specs = [str(e) for e in encoders] if isinstance(encoders, ListConfig) else [str(encoders)] if encoders else []
    out = _out(cfg)
    results = estimate(_required(cfg, "support", "labelled pictures"), specs, out, method=cfg.method,
                       shots=list(cfg.shots), trials=cfg.trials, seed=cfg.seed, batch_size=cfg.batch_size,
                       device=cfg.device)
    print(estimate_table(results))
    return {"command": "estimate", "output": str(out),
            "estimates": {e.encoder: {"accuracy": e.accuracy, "ci95": e.ci95} for e in results}}


def _suggest(cfg: DictConfig) -> dict[str, Any]:
    from mmpretrain.fewshot import suggest

    out = _out(cfg)
    records = suggest(_required(cfg, "classifier", "classifier folder"), _required(cfg, "pool", "unlabelled pictures"),
                      out, n=cfg.n, weight=cfg.diversity, batch_size=cfg.batch_size, progress=cfg.progress)
    return {"command": "suggest", "output": str(out), "suggested": len(records)}


def _export(cfg: DictConfig) -> dict[str, Any]:
    from mmpretrain.fewshot import export_classifier

    record = export_classifier(_required(cfg, "classifier", "classifier folder"),
                               _required(cfg, "output", "file to write"), format=cfg.format, tolerance=cfg.tolerance)
    return {"command": "export", "output": str(cfg.output), "parity": record["parity"]}


@task_wrapper
def fewshot_command(cfg: DictConfig) -> dict[str, Any]:
    """Run the subcommand in `cfg.command` and return its summary (also printed as one JSON line)."""
    apply_extras(cfg)
    commands = {"fit": _fit, "predict": _predict, "estimate": _estimate, "suggest": _suggest, "export": _export}
    if cfg.command not in commands:
        raise ConfigError(f"command={cfg.command} is not one of {'|'.join(COMMANDS)}")
    summary = commands[cfg.command](cfg)
    print(json.dumps(summary))
    return summary


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="fewshot.yaml")
@short_errors("mmpretrain-fewshot")
def _hydra_main(cfg: DictConfig) -> None:
    """Hydra's entry: run dir, logging and overrides; the subcommand arrives as `command=`."""
    summary = fewshot_command(cfg)
    print_outputs("mmpretrain-fewshot", [summary["output"]])


def main(argv: list[str] | None = None) -> None:
    """Console entry: the subcommand first, then Hydra overrides (and Hydra's flags, such as `--cfg job`)."""
    run_subcommand("mmpretrain-fewshot", "fewshot.yaml", _hydra_main, COMMANDS, USAGE, argv)


if __name__ == "__main__":
    main()
