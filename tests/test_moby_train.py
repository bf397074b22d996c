"""MoBY training end to end: compose API runs, resume exactness, DDP key gathering, NaN guard, bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_cfg, tiny_overrides

from mmpretrain.cli.train import train
from mmpretrain.ssl import cosine_momentum


class Recorder(pl.Callback):
    """Momentum, queue pointer and learning rate seen at the start of every training step."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[float, int, float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows[trainer.global_step] = (pl_module.current_momentum(), int(pl_module.queue1.ptr), lr)


def _run(cfg, extra_callbacks=()):
    """train(cfg) with extra callbacks appended (the config's own callbacks are kept)."""
    import mmpretrain.cli.train as train_mod

    original = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: original(c) + list(extra_callbacks)
    try:
        return train(cfg)
    finally:
        train_mod.instantiate_callbacks = original


def test_fast_dev_run_swin_tiny_experiment(demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "train.yaml",
        [
            "experiment=moby_swin_tiny",
            "trainer=cpu",
            "debug=fdr",
            f"data.root={demo_root}/train",
            f"data.knn_train_root={demo_root}/train",
            f"data.knn_val_root={demo_root}/val",
            "data.batch_size=2",
        ],
        tmp_path,
    )
    assert cfg.model.backbone == "swin_tiny_patch4_window7_224" and cfg.data.image_size == 224
    assert cfg.model.queue_len == 4096 and cfg.model.temperature == 0.2
    metrics, objects = train(cfg)
    model = objects["model"]
    online_dp = [m.drop_prob for m in model.backbone.modules() if type(m).__name__ == "DropPath"]
    target_dp = [m for m in model.target_backbone.modules() if type(m).__name__ == "DropPath"]
    assert max(online_dp) == pytest.approx(0.2) and not target_dp
    assert torch.isfinite(metrics["train/loss"])
    assert int(model.queue1.ptr) == 2 and int(model.queue2.ptr) == 2
    assert "val/knn_top1" in metrics


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_mixed_precision_steps_with_gradient_clipping(demo_root: Path, tmp_path: Path, precision: str) -> None:
    """Lightning's AMP plugin refuses to clip the gradients of a fused AdamW: the optimizer must follow precision."""
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "debug=fdr", f"trainer.precision={precision}",
                                     "trainer.gradient_clip_val=5.0"], tmp_path)
    metrics, objects = train(cfg)
    assert torch.isfinite(metrics["train/loss"])
    defaults = objects["trainer"].optimizers[0].defaults
    assert bool(defaults.get("fused")) == (precision == "32-true")


def test_tiny_run_logs_and_checkpoints(demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer.max_epochs=2"], tmp_path)
    metrics, objects = train(cfg)
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    state = ckpt["state_dict"]
    steps = objects["trainer"].global_step
    assert steps == 2 * (48 // 8)
    assert int(state["queue1.ptr"]) == (steps * 8) % 64
    assert any(k.startswith("target_backbone.") for k in state) and "queue2.keys" in state
    assert ckpt["hyper_parameters"]["backbone"] == "swin_tiny_patch4_window7_224"
    assert 0.0 <= float(metrics["val/knn_top1"]) <= 100.0
    assert (tmp_path / "run/view_pairs.png").stat().st_size > 0
    csv = next((tmp_path / "run/csv").rglob("metrics.csv")).read_text()
    for key in ("train/loss_step", "train/momentum", "lr-AdamW", "val/knn_top1"):
        assert key in csv


def test_resume_continues_momentum_queue_and_lr(demo_root: Path, tmp_path: Path) -> None:
    full_rec = Recorder()
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer.max_epochs=2"], tmp_path / "full")
    _run(cfg, [full_rec])

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer.max_epochs=2"], tmp_path / "split")
    _run(cfg, [_StopAfter(steps=6)])
    ckpt = tmp_path / "split/run/checkpoints/last.ckpt"
    saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert saved["global_step"] == 6
    cfg.ckpt_path = str(ckpt)
    resumed = Recorder()
    _run(cfg, [resumed])

    total = 2 * 6
    assert sorted(resumed.rows) == list(range(6, total))
    for step, (momentum, ptr, lr) in resumed.rows.items():
        want_m, want_ptr, want_lr = full_rec.rows[step]
        assert momentum == pytest.approx(want_m, abs=1e-12)
        assert momentum == pytest.approx(cosine_momentum(step, total))
        assert ptr == want_ptr == (step * 8) % 64
        assert lr == pytest.approx(want_lr, rel=1e-9)
    assert resumed.rows[6][0] > 0.99  # the official code would restart at 0.99


class _StopAfter(pl.Callback):
    """End the run like a job that ran out of time, after the epoch-end checkpoint of `steps`."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


class _PoisonAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.backbone.parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer.max_epochs=3"], tmp_path)
    with pytest.raises(FloatingPointError, match=r"global step 8"):
        _run(cfg, [_PoisonAt(step=8), _Snapshot(tmp_path / "run/checkpoints/last.ckpt", at_step=8)])
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert hashlib.sha256(last.read_bytes()).hexdigest() == _Snapshot.digest
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 6


class _Snapshot(pl.Callback):
    digest = ""

    def __init__(self, path: Path, at_step: int) -> None:
        self.path, self.at_step = path, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            _Snapshot.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()


def test_queue_must_divide_global_batch(demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root, queue_len=60), "trainer.max_epochs=1"], tmp_path)
    with pytest.raises(ValueError, match=r"queue_len=60 must be divisible by the global batch size 8"):
        train(cfg)


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ("data.root={missing}", FileNotFoundError, r"data.root=.*does not exist"),
        ("data.root={empty}", ValueError, r"data.root=.*no images found"),
        ("model.backbone=swin_tinny_patch4_window7_224", ValueError, r"unknown backbone 'swin_tinny.*did you mean"),
    ],
)
def test_bad_input_errors(demo_root: Path, tmp_path: Path, override: str, error: type, match: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("not an image")
    override = override.format(missing=tmp_path / "nope", empty=tmp_path / "empty")
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), override], tmp_path)
    with pytest.raises(Exception) as info:
        train(cfg)
    err = info.value
    while not isinstance(err, error) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, error)
    assert pytest.importorskip("re").search(match, str(err))


def test_unknown_experiment_names_the_value(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="experiment/moby_swin_huge"):
        compose_cfg("train.yaml", ["experiment=moby_swin_huge"], tmp_path)


def test_ddp_two_cpu_processes_enqueue_keys_from_both_ranks(demo_root: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "train.yaml",
        [*tiny_overrides(demo_root, batch_size=4), "trainer=ddp_sim", "trainer.max_epochs=1", "callbacks=none",
         "+callbacks.ckpt._target_=pytorch_lightning.callbacks.ModelCheckpoint",
         f"+callbacks.ckpt.dirpath={tmp_path}/ckpt", "+callbacks.ckpt.save_last=true"],
        tmp_path,
    )
    _, objects = train(cfg)
    assert objects["trainer"].world_size == 2
    state = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    steps = 48 // (4 * 2)
    # each step enqueues the all-gathered keys of BOTH ranks: 2 x 4 per step
    assert int(state["queue1.ptr"]) == (steps * 8) % 64
    written = state["queue1.keys"][:, : steps * 8]
    assert torch.allclose(written.norm(dim=0), torch.ones(steps * 8), atol=1e-4)
    # rank 0's and rank 1's halves of a step are different images, so different keys
    assert not torch.allclose(written[:, :4], written[:, 4:8])
