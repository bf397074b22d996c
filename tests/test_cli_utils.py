"""The entry points' plumbing: atomic checkpoints, `ckpt_path=last`, W&B online/offline choice, trial table."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mmpretrain.cli import utils
from mmpretrain.errors import MMPretrainError


def test_checkpoint_write_failure_keeps_previous_file(tmp_path: Path, monkeypatch) -> None:
    """Lightning's checkpoint IO writes through an fsspec transaction (temporary file, then rename)."""
    from fsspec.implementations.local import LocalFileOpener
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    io = TorchCheckpointIO()
    target = tmp_path / "ckpts/last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    original_write = LocalFileOpener.write

    def half_then_fail(self, data):
        original_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(LocalFileOpener, "write", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "pad": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_resolve_last_picks_newest_run(tmp_path: Path) -> None:
    old = tmp_path / "logs/moby/runs/2026-01-01/checkpoints/last.ckpt"
    new = tmp_path / "logs/moby/runs/2026-01-02/checkpoints/last.ckpt"
    for i, path in enumerate((old, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() + i, time.time() + i))
    assert utils.resolve_ckpt_path("last", tmp_path / "logs", "moby") == str(new)
    trial = tmp_path / "logs/moby/multiruns/2026-01-03/0/checkpoints/last.ckpt"  # a newer sweep trial
    trial.parent.mkdir(parents=True)
    trial.write_bytes(b"x")
    os.utime(trial, (time.time() + 5, time.time() + 5))
    assert utils.resolve_ckpt_path("last", tmp_path / "logs", "moby") == str(new), "sweep trials are not resumed"
    assert utils.resolve_ckpt_path(None, tmp_path / "logs", "moby") is None
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoints/last.ckpt under .*other"):
        utils.resolve_ckpt_path("last", tmp_path / "logs", "other")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope.ckpt: file does not exist"):
        utils.resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path / "logs", "moby")


def test_wandb_offline_without_login(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert not utils.wandb_logged_in()
    cfg = OmegaConf.create(
        {"wandb": {"_target_": "pytorch_lightning.loggers.WandbLogger", "offline": "auto", "project": "t",
                   "save_dir": str(tmp_path / "w")}}
    )  # fmt: skip
    caplog.set_level("INFO")
    (logger,) = utils.instantiate_loggers(cfg)
    assert logger._offline is True
    assert any("logging offline" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert utils.wandb_logged_in()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    monkeypatch.delenv("WANDB_API_KEY")
    assert utils.wandb_logged_in()


def test_metric_value_error_names_the_metric() -> None:
    assert utils.get_metric_value({"val/knn_top1": torch.tensor(42.5)}, "val/knn_top1") == 42.5
    with pytest.raises(MMPretrainError, match=r"optimized_metric=val/knn_top1 was not logged"):
        utils.get_metric_value({"train/loss": 1.0}, "val/knn_top1")


def test_missing_metric_outside_a_sweep_is_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert utils.get_metric_value({"train/loss": 1.0}, "val/knn_top1", required=False) is None
    assert "optimized_metric=val/knn_top1 was not logged" in caplog.text


class _Return:
    def __init__(self, value, overrides, error=None):
        self._value, self.overrides, self._error = value, overrides, error

    @property
    def return_value(self):
        if self._error:
            raise self._error
        return self._value


def test_trial_table_orders_best_first() -> None:
    table = utils.TrialTable(metric="val/knn_top1")
    table.on_job_end(None, _Return(30.0, ["model.base_lr=0.001"]))
    table.on_job_end(None, _Return(None, ["model.base_lr=1.0"], error=FloatingPointError("nan")))
    table.on_job_end(None, _Return(55.5, ["model.base_lr=0.002"]))
    lines = table.format().splitlines()
    assert lines[0].split()[:2] == ["trial", "val/knn_top1"]
    assert lines[1].split()[:3] == ["2", "55.5000", "ok"] and lines[2].split()[:2] == ["0", "30.0000"]
    assert "failed: FloatingPointError" in lines[3] and "model.base_lr=1.0" in lines[3]
