"""`mmpretrain-eval task=fewshot`: the issue's command through the compose API and the console script, embedding
stores, the random-init baseline and every error a user can hit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_SWIN, compose_cfg
from PIL import Image

from mmpretrain.cli.eval import evaluate
from mmpretrain.cli.utils import get_metric_value
from mmpretrain.embeddings import write_store
from mmpretrain.encoders import ImageEncoder, load_encoder
from mmpretrain.fewshot import evaluate_episodes

BIN = Path(sys.executable).parent
DEFAULT_METHODS = ["simpleshot", "protonet", "logreg", "soft_kmeans"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Lightning checkpoint of a tiny MoBY (seeded weights), as `mmpretrain-train` writes them."""
    from mmpretrain.ssl import MoBY

    torch.manual_seed(0)
    model = MoBY(backbone=TINY_SWIN["backbone"], backbone_kwargs=TINY_SWIN["backbone_kwargs"],
                 image_size=TINY_SWIN["image_size"], proj_hidden_dim=64, proj_dim=16, queue_len=64)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _clusters(n_classes: int, per_class: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight, far-apart Gaussian clusters: any sensible few-shot method separates them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 10.0
    labels = np.repeat(np.arange(n_classes), per_class)
    return (centers[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def _store(root: Path, features: np.ndarray, labels: list | np.ndarray | None) -> Path:
    metadata = {"id": [f"row{i}" for i in range(len(features))]}
    if labels is not None:
        metadata["label"] = list(labels)
    write_store(root, features, metadata, encoder="synthetic", normalized=False)
    return root


def _fewshot(overrides: list[str], out: Path) -> tuple[dict[str, float], dict, dict]:
    cfg = compose_cfg("eval.yaml", ["task=fewshot", "trainer=cpu", *overrides], out)
    metrics, objects = evaluate(cfg)
    record = json.loads((out / "run/fewshot.json").read_text())
    return metrics, objects, {"cfg": cfg, "record": record}


def test_issue_command_on_a_checkpoint_and_a_labeled_folder(ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    command = [f"encoder={ckpt}", f"data.root={demo_root}/train", "n_way=3", "n_shot=[1,3]", "n_query=4",
               "episodes=50"]
    metrics, objects, extra = _fewshot(command, tmp_path)
    record, run = extra["record"], tmp_path / "run"
    assert record["encoder"] == str(ckpt) and record["random_init"] is False
    assert (record["rows"], record["classes"], record["base_classes"]) == (48, 4, [])
    assert list(record["results"]) == DEFAULT_METHODS
    for method in DEFAULT_METHODS:
        assert list(record["results"][method]) == ["1", "3"]
        for shot in (1, 3):
            summary = record["results"][method][str(shot)]
            accuracies = objects["results"][method][shot].accuracies
            assert accuracies.shape == (50,) and ((accuracies >= 0) & (accuracies <= 100)).all()
            assert summary["episodes"] == 50
            assert summary["mean"] == pytest.approx(accuracies.mean())
            assert summary["ci95"] == pytest.approx(1.96 * accuracies.std() / math.sqrt(50))
            assert summary["ci95"] > 0
            assert metrics[f"fewshot/{method}/3way_{shot}shot/acc"] == summary["mean"]
            assert metrics[f"fewshot/{method}/3way_{shot}shot/ci95"] == summary["ci95"]

    # The features are the checkpoint's raw embeddings of the folder, and the episodes those of the library call.
    images = sorted((demo_root / "train").rglob("*.png"))
    expected = load_encoder(ckpt, device="cpu").encode_images(images, normalize=False)
    np.testing.assert_allclose(objects["features"], expected, rtol=1e-4, atol=1e-5)
    assert list(objects["labels"]) == [p.parent.name for p in images]
    again = evaluate_episodes(expected, [p.parent.name for p in images], 3, 3, 4, 50, "protonet", seed=42)
    np.testing.assert_allclose(again.accuracies, objects["results"]["protonet"][3].accuracies)

    table = (run / "fewshot_table.txt").read_text().splitlines()
    assert len(table) == 2 + 2 * len(DEFAULT_METHODS)
    cells = {(row.split("|")[1].strip(), row.split("|")[3].strip()): row.split("|")[6].strip() for row in table[2:]}
    mean, ci = record["results"]["logreg"]["3"]["mean"], record["results"]["logreg"]["3"]["ci95"]
    assert cells[("logreg", "3")] == f"{mean:.2f} ± {ci:.2f}", "the table, JSON and metrics share one unit: %"
    with Image.open(run / "fewshot.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    cfg = extra["cfg"]
    assert cfg.optimized_metric == "fewshot/simpleshot/3way_1shot/acc"
    assert get_metric_value(metrics, cfg.optimized_metric) == record["results"]["simpleshot"]["1"]["mean"]


def test_random_init_is_the_same_architecture_with_other_weights(
    ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    command = [f"encoder={ckpt}", f"data.root={demo_root}/train", "n_way=3", "n_shot=[1]", "n_query=4",
               "episodes=20", "methods=[protonet]", "plot=false"]
    _, trained, _ = _fewshot(command, tmp_path / "trained")
    _, random, extra = _fewshot([*command, "random_init=true"], tmp_path / "random")
    assert extra["record"]["random_init"] is True and "random init" in extra["record"]["encoder"]
    encoder = random["input"].encoder
    assert isinstance(encoder, ImageEncoder) and encoder.preprocessing["image_size"] == TINY_SWIN["image_size"]
    assert random["features"].shape == trained["features"].shape
    assert not np.allclose(random["features"], trained["features"], atol=1e-3)
    assert not (tmp_path / "random/run/fewshot.png").exists()


def test_store_separable_clusters_score_near_one_and_shuffled_labels_near_chance(tmp_path: Path) -> None:
    features, labels = _clusters(n_classes=10, per_class=30)
    names = np.array([f"class{c}" for c in labels])
    store = _store(tmp_path / "clusters", features, names)
    metrics, objects, extra = _fewshot([f"store={store}", "n_way=5", "n_shot=[1,5]", "n_query=10",
                                        "episodes=200", "n_base=3"], tmp_path / "sep")
    record = extra["record"]
    assert record["encoder"] == "synthetic" and record["source"] == f"store={store}"
    accuracies = [v for k, v in metrics.items() if k.endswith("/acc")]
    assert len(accuracies) == 2 * len(DEFAULT_METHODS) and min(accuracies) > 95
    # n_base classes feed SimpleShot's centering only: episodes use the other, class-disjoint classes.
    assert len(record["base_classes"]) == 3 and record["classes"] == 7 and record["rows"] == 7 * 30
    assert set(record["base_classes"]).isdisjoint(set(objects["labels"]))

    shuffled = _store(tmp_path / "shuffled", features, np.random.default_rng(1).permutation(names))
    metrics, _, extra = _fewshot([f"store={shuffled}", "n_way=5", "n_shot=5", "n_query=10", "episodes=300"],
                                 tmp_path / "shuf")
    assert extra["cfg"].n_shot == [5] and extra["cfg"].optimized_metric == "fewshot/simpleshot/5way_5shot/acc"
    for method in DEFAULT_METHODS:
        mean = metrics[f"fewshot/{method}/5way_5shot/acc"]
        ci = metrics[f"fewshot/{method}/5way_5shot/ci95"]
        assert abs(mean - 100 / 5) < 3 * ci + 3, (method, mean, ci)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of 20 rows and one (c4) of 8."""
    features, labels = _clusters(n_classes=5, per_class=20)
    keep = np.concatenate([np.arange(80), np.arange(80, 88)])
    return _store(tmp_path_factory.mktemp("small"), features[keep], [f"c{c}" for c in labels[keep]])


def _unlabeled(root: Path) -> Path:
    return _store(root / "unlabeled", _clusters(2, 5)[0], labels=None)


def _partly_labeled(root: Path) -> Path:
    return _store(root / "partly", _clusters(2, 5)[0], ["a"] * 9 + [None])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (lambda store, tmp: [f"store={store}", "n_way=6"],
         r"n_way=6 .*6-way episodes need at least 6 classes, but the labels hold only 5"),
        (lambda store, tmp: [f"store={store}", "n_way=5", "n_shot=[1,5]", "n_query=10"],
         r"n_shot=\[1, 5\] n_query=10: .*5-way 5-shot 10-query episodes need 5 classes with at least 15 examples"
         r".*'c4': 8"),
        (lambda store, tmp: [f"store={store}", "n_base=5"], r"store=.*: n_base=5: n_base must be between 1 and 4"),
        (lambda store, tmp: [f"store={store}", "methods=[protonet,nope]"],
         r"methods=\['protonet', 'nope'\]: unknown few-shot method 'nope'; known: .*bd_cspn"),
        (lambda store, tmp: [], r"task=fewshot needs encoder=.* or store="),
        (lambda store, tmp: ["encoder=some_model"], r"encoder=some_model needs data.root="),
        (lambda store, tmp: [f"store={store}", "encoder=some_model"], r"not both"),
        (lambda store, tmp: [f"store={store}", "random_init=true"], r"random_init=true needs encoder="),
        (lambda store, tmp: [f"store={_unlabeled(tmp)}"], r"store=.*unlabeled: the embedding store has no 'label'"),
        (lambda store, tmp: [f"store={_partly_labeled(tmp)}"], r"store=.*partly: 1 of 10 rows have no 'label'"),
        (lambda store, tmp: [f"store={tmp / 'missing'}"], r"missing: folder does not exist"),
    ],
    ids=["too-few-classes", "class-smaller-than-k-plus-q", "n-base", "unknown-method", "no-input", "no-data-root",
         "encoder-and-store", "random-init-store", "store-without-labels", "store-partly-labeled", "no-store"],
)
def test_errors_name_the_setting(overrides, match: str, small_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate(compose_cfg("eval.yaml", ["task=fewshot", *overrides(small_store, tmp_path)], tmp_path))


def test_small_image_classes_fail_before_any_image_is_encoded(
    ckpt: Path, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("images were encoded before the episode check")

    monkeypatch.setattr(ImageEncoder, "encode_images", refuse)
    cfg = compose_cfg("eval.yaml", ["task=fewshot", f"encoder={ckpt}", f"data.root={demo_root}/train", "n_way=3",
                                    "n_shot=[1,5]", "n_query=10"], tmp_path)
    with pytest.raises(ValueError, match=rf"data.root={demo_root}/train: .*need 3 classes with at least 15 examples"):
        evaluate(cfg)


def test_console_script_logs_to_wandb_offline(ckpt: Path, demo_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    env.pop("MMPRETRAIN_ROOT", None)
    run = subprocess.run(
        [str(BIN / "mmpretrain-eval"), "task=fewshot", f"encoder={ckpt}", f"data.root={demo_root}/train", "n_way=3",
         "n_shot=[1,2]", "n_query=4", "episodes=20", "methods=[simpleshot,bd_cspn]", "trainer=cpu", "logger=wandb",
         "extras.print_config=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith('{"task": "fewshot"')]
    printed = json.loads(line)
    assert list(printed["results"]) == ["simpleshot", "bd_cspn"]
    (folder,) = (tmp_path / "logs/eval/runs").iterdir()
    assert json.loads((folder / "fewshot.json").read_text()) == printed
    assert (folder / "fewshot.png").is_file() and "bd_cspn" in (folder / "fewshot_table.txt").read_text()
    (wandb_run,) = (folder / "wandb").glob("offline-run-*")
    (table,) = wandb_run.glob("files/media/table/fewshot/results_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"][:3] == ["method", "n_way", "n_shot"] and len(logged["data"]) == 4
    assert list(wandb_run.glob("files/media/images/fewshot/accuracy_vs_shots_*.png"))
