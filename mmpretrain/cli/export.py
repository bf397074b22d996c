"""`mmpretrain-export store=<dir> output=<dir> format=easyrec|parquet|npy dim=64 [i2i_k=50]`: recsys features."""

from __future__ import annotations

import json
import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from mmpretrain.cli.entry import print_outputs, run_hydra, run_outputs, short_errors
from mmpretrain.cli.utils import apply_extras, task_wrapper
from mmpretrain.recsys import export_features

log = logging.getLogger(__name__)

# Hydra's command line keeps a typed "\t" as two characters; these spellings mean the control character.
_ESCAPES = {"\\t": "\t", "tab": "\t", "\\x1d": "\x1d"}


def _char(value: str | None) -> str | None:
    """A separator from the command line or YAML, with escape spellings resolved (None: the export's default)."""
    return None if value is None else _ESCAPES.get(str(value), str(value))


@task_wrapper
def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the store at `cfg.store` into `cfg.output` and print the summary as one JSON line."""
    apply_extras(cfg)
    summary = export_features(
        cfg.store,
        cfg.output,
        format=cfg.format,
        dim=cfg.dim,
        whiten=cfg.whiten,
        projection=cfg.projection,
        dtype=cfg.dtype,
        normalize=cfg.normalize,
        feature_name=cfg.feature_name,
        id_column=cfg.id_column,
        allow_other_source=cfg.allow_other_source,
        separator=_char(cfg.separator),
        delimiter=_char(cfg.delimiter),
        incremental=cfg.incremental,
        overwrite=cfg.overwrite,
        fit_sample=cfg.fit_sample,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        part_size=cfg.part_size,
        i2i_k=cfg.i2i_k,
        i2i_threshold=cfg.i2i_threshold,
        i2i_format=cfg.i2i_format,
        i2i_index_key=cfg.i2i_index_key,
        i2i_target_recall=cfg.i2i_target_recall,
        verify=cfg.verify,
        progress=cfg.progress,
    )
    log.info("exported %d items (%d written) to %s", summary["items"], summary["written"], summary["output"])
    print(json.dumps(summary))
    return summary


@hydra.main(version_base="1.3", config_path="pkg://mmpretrain.conf", config_name="export.yaml")
@short_errors("mmpretrain-export")
def _hydra_main(cfg: DictConfig) -> None:
    """Hydra's entry: export, then name the files written."""
    summary = export(cfg)
    print_outputs("mmpretrain-export", run_outputs(summary["output"]) or [summary["output"]])


def main(argv: list[str] | None = None) -> None:
    """Console entry: `--version`, `--help`, short errors and "did you mean" around Hydra."""
    run_hydra("mmpretrain-export", "export.yaml", _hydra_main, argv)


if __name__ == "__main__":
    main()
