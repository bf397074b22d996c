"""What a run leaves in its folder: who made it (`run.json`: package version, git commit, command line), its
resolved config (`config.yaml`), and nothing at all when it failed before its work started.

Only a folder Hydra made for this run (`hydra.runtime.output_dir`) is ever removed, never a sweep trial's and
never one holding a checkpoint.
"""

from __future__ import annotations

import datetime
import json
import logging
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpretrain import __version__

__all__ = ["RUN_FILE", "in_sweep", "remove_failed_run", "run_folder", "run_info", "write_metrics", "write_run_files"]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"


@cache
def _git_commit() -> str | None:
    """The commit of the checkout this package runs from (with `-dirty` for uncommitted changes), else None."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def run_info() -> dict[str, Any]:
    """Package version, git commit (None outside a checkout), the command line as typed and the start time."""
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"version": __version__, "git_commit": _git_commit(), "command": command, "started": started}


def run_folder(cfg: DictConfig) -> Path | None:
    """The folder Hydra created for this run (or sweep trial), or None (the compose API, no Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    output = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    wanted = OmegaConf.select(cfg, "paths.output_dir", default=None)
    if not output or not wanted or Path(output) != Path(wanted):
        return None
    return Path(output)


def in_sweep() -> bool:
    """True inside a Hydra multirun: a failed trial keeps its folder, the sweep's table names it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_run_files(cfg: DictConfig, folder: str | Path) -> dict[str, Any]:
    """Write `run.json` and the resolved `config.yaml` into `folder`; returns the run record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = run_info()
    (folder / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")
    _write_config(cfg, folder)
    return info


def refresh_config(cfg: DictConfig) -> None:
    """Rewrite the run folder's `config.yaml` after the task filled values in (an encoder's preprocessing)."""
    folder = run_folder(cfg)
    if folder is not None:
        _write_config(cfg, folder)


def _write_config(cfg: DictConfig, folder: Path) -> None:
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:  # a value still missing (the task will name it): the config as composed
        text = OmegaConf.to_yaml(cfg)
    (folder / CONFIG_FILE).write_text(text)


def write_metrics(folder: str | Path, record: dict[str, Any], name: str = "metrics.json") -> dict[str, Any]:
    """Write a task's result as JSON with the run record (`run`: version, git commit, command line) beside it;
    returns what was written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_file = folder / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else run_info()
    written = {**record, "run": run}
    (folder / name).write_text(json.dumps(written, indent=2) + "\n")
    return written


def remove_failed_run(folder: Path, log_dir: str | Path | None) -> bool:
    """Delete the run folder of a run that failed before its work started, and the parents it leaves empty up to
    `log_dir` (included); a folder holding a checkpoint is kept. Returns whether it was removed."""
    if not folder.is_dir() or any(folder.rglob("*.ckpt")):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):  # the run's log file lives in the folder
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(folder.resolve()):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(folder, ignore_errors=True)
    stop = Path(log_dir).resolve() if log_dir else folder.parent
    parent = folder.resolve().parent
    while parent.is_relative_to(stop) and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        if parent == stop:
            break
        parent = parent.parent
    return True
