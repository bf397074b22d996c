"""The console scripts as a user runs them: installed (non-editable) from another directory, eval, sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_cfg, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1", **extra}
    env.pop("MMPRETRAIN_ROOT", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain (non-editable) install of this checkout into a fresh folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(REPO)],
        check=True, env=_env(), cwd=tmp_path_factory.mktemp("build"),
    )
    return target


@pytest.mark.slow
def test_installed_cli_trains_from_a_temporary_directory(installed: Path, demo_root: Path, tmp_path: Path) -> None:
    assert (installed / "mmpretrain/conf/experiment/moby_swin_tiny.yaml").is_file()
    env = _env(PYTHONPATH=str(installed))
    where = subprocess.run(
        [sys.executable, "-c", "import mmpretrain; print(mmpretrain.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )
    assert where.stdout.startswith(str(installed))
    script = installed / "bin/mmpretrain-train"
    overrides = [o for o in tiny_overrides(demo_root) if not o.startswith("callbacks.")]
    run = subprocess.run(
        [sys.executable, str(script), *overrides, "debug=fdr"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "logs/debug/runs").iterdir()), "run folder created under the working directory"


def test_unknown_experiment_on_the_command_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(BIN / "mmpretrain-train"), "experiment=nope_not_here"], capture_output=True, text=True, env=_env(),
        cwd=tmp_path, timeout=120,
    )
    assert run.returncode != 0
    assert "experiment/nope_not_here" in run.stderr and "moby_swin_tiny" in run.stderr


def _train_tiny(demo_root: Path, out: Path, epochs: int = 1) -> Path:
    from mmpretrain.cli.train import train

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), f"trainer.max_epochs={epochs}"], out)
    train(cfg)
    return out / "run/checkpoints/last.ckpt"


def test_eval_knn_and_linear_on_a_training_checkpoint(demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.eval import evaluate

    ckpt = _train_tiny(demo_root, tmp_path / "train")
    common = [f"encoder={ckpt}", f"data.train_root={demo_root}/train", f"data.val_root={demo_root}/val",
              "data.num_workers=0", "data.batch_size=16", "trainer=cpu"]
    cfg = compose_cfg("eval.yaml", common, tmp_path / "knn")
    trained, objects = evaluate(cfg)
    assert objects["datamodule"].hparams.image_size == 32  # preprocessing comes from the checkpoint
    assert cfg.data.image_size == 32, "the config (config.yaml, loggers) shows the checkpoint's size, not 224"
    assert set(trained) == {"knn/top1", "knn/top5"} and 0 <= trained["knn/top1"] <= 100
    record = json.loads((tmp_path / "knn/run/metrics.json").read_text())
    assert record["knn/top1"] == trained["knn/top1"] and record["random_init"] is False
    assert set(record["run"]) == {"version", "git_commit", "command", "started"}
    _random, objects_r = evaluate(compose_cfg("eval.yaml", [*common, "random_init=true"], tmp_path / "rand"))
    w_trained = next(objects["backbone"].parameters())
    w_random = next(objects_r["backbone"].parameters())
    assert w_trained.shape == w_random.shape and not (w_trained == w_random).all()
    linear, objects = evaluate(
        compose_cfg("eval.yaml", [*common, "task=linear", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"],
                    tmp_path / "lin")
    )
    assert set(linear) == {"linear/top1", "linear/top5"} and 0 <= linear["linear/top1"] <= 100
    assert objects["trainer"].current_epoch == 2, "trainer.max_epochs is the probe's epochs"


def test_eval_rejects_unknown_checkpoint(tmp_path: Path) -> None:
    from mmpretrain.cli.eval import evaluate

    cfg = compose_cfg("eval.yaml", ["encoder=no_such_model", "data.train_root=x", "data.val_root=y"], tmp_path)
    with pytest.raises(Exception, match="no_such_model"):
        evaluate(cfg)


@pytest.mark.slow
def test_optuna_sweep_prints_trial_table(demo_root: Path, tmp_path: Path) -> None:
    overrides = [o for o in tiny_overrides(demo_root) if o != "logger=csv"]
    run = subprocess.run(
        [str(BIN / "mmpretrain-train"), *overrides, "hparams_search=moby_optuna", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.sampler.n_startup_trials=2", "trainer.max_epochs=1", "logger=wandb",
         "extras.print_config=false", "trainer.enable_progress_bar=false"],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "val/knn_top1"])
    rows = [r for r in lines[header + 1 :] if r.strip() and r.split()[0].isdigit()]
    assert len(rows) == 2 and all(" ok " in r for r in rows)
    assert all("model.base_lr=" in r and "model.temperature=" in r for r in rows)
    runs = list((tmp_path / "logs/moby_demo/multiruns").rglob("wandb/offline-run-*"))
    assert len(runs) == 2, "one offline W&B run per trial"
