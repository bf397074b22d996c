"""The entry points' plumbing: atomic checkpoints, `ckpt_path=last`, W&B online/offline choice, trial table, the
training callbacks (last.ckpt, a log line per epoch) and the configs' resolver."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
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
    )
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


class _Tiny(pl.LightningModule):
    """Two batches of a linear regression per epoch: enough steps for the callbacks to act on."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
        return torch.utils.data.DataLoader(data, batch_size=4)


def _fit(callbacks, epochs: int, ckpt_path=None) -> pl.Trainer:
    saves = any(isinstance(c, pl.callbacks.Checkpoint) for c in callbacks)  # no default ModelCheckpoint in the cwd
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", log_every_n_steps=1,
                         enable_checkpointing=saves)
    trainer.fit(_Tiny(), ckpt_path=ckpt_path)
    return trainer


def test_last_checkpoint_every_n_epochs_always_at_the_end_and_resumable(tmp_path: Path) -> None:
    from mmpretrain.callbacks import LastCheckpoint

    saved = []

    class Spy(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            saved.append(trainer.global_step)

    trainer = _fit([LastCheckpoint(tmp_path / "checkpoints", every_n_epochs=2), Spy()], epochs=3)
    assert saved == [4, 6], "after epoch 2, then at the end of fit"
    saved.clear()
    _fit([LastCheckpoint(tmp_path / "every", every_n_epochs=1), Spy()], epochs=2)
    assert saved == [2, 4], "the end of fit does not save the step its last epoch saved again"
    last = tmp_path / "checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 6
    assert utils.saved_checkpoints(trainer) == [last]
    _fit([LastCheckpoint(tmp_path / "checkpoints", every_n_epochs=0)], epochs=5, ckpt_path=last)
    assert torch.load(last, weights_only=False)["global_step"] == 10, "resumed at step 6, two more epochs"
    with pytest.raises(MMPretrainError, match=r"callbacks.last_checkpoint.every_n_epochs=-1 must be in \[0, inf\]"):
        LastCheckpoint(tmp_path, every_n_epochs=-1)


def test_epoch_log_writes_one_line_per_epoch_and_per_n_steps(caplog) -> None:
    from mmpretrain.callbacks import EpochLog

    with caplog.at_level(logging.INFO, logger="mmpretrain"):
        _fit([EpochLog(every_n_steps=3)], epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "mmpretrain.callbacks"]
    epochs = [line for line in lines if line.startswith("epoch ") and " step " not in line]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("train/loss=" in line and "2 steps in" in line and "steps/s" in line for line in epochs)
    steps = [line for line in lines if " step " in line]
    assert [line.split(":")[0] for line in steps] == ["epoch 1 step 3"] and "train/loss=" in steps[0]


def test_config_package_registers_its_resolver(tmp_path: Path) -> None:
    """The `mmpretrain.split_beside` resolver comes with the configs, and reads folders only when resolved."""
    import mmpretrain.conf  # noqa: F401

    from mmpretrain.cli.resolvers import split_beside

    assert OmegaConf.has_resolver("mmpretrain.split_beside")
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat/a.png").write_bytes(b"")
    assert split_beside(str(tmp_path / "train"), "val") == str(tmp_path / "val")
    assert split_beside(str(tmp_path / "val" / "cat"), "val") is None and split_beside(None, "val") is None


def test_cli_reference_lists_every_key_of_every_command() -> None:
    """docs/cli.md keeps up with the configs: each documented key of each command and eval task appears there."""
    from mmpretrain.cli.entry import conf_dir, documented_keys, task_keys

    doc = (Path(__file__).resolve().parents[1] / "docs/cli.md").read_text()
    conf = conf_dir()
    keys = [k for name in ("train", "eval", "extract", "index", "export") for k, _, _ in
            documented_keys(conf / f"{name}.yaml")]
    keys += [k for task in conf.glob("task/*.yaml") for k, _, _ in task_keys(task)]
    missing = sorted({k for k in keys if f"`{k}`" not in doc})
    assert not missing, f"docs/cli.md lacks {missing}"
