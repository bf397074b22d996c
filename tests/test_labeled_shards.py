"""Labelled data from WebDataset shards: `scripts/make_shards.py` records the class list, and kNN, few-shot, the
linear probe and video fine-tuning read shards with the same labels (and metrics) as the folder or manifest the
shards were made from."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_cfg

from mmpretrain.cli.eval import evaluate
from mmpretrain.data import labeled_folder
from mmpretrain.data.shards import INDEX_FILE, expand_shards, shard_vocabulary, write_shards
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.video.io.manifest import label_vocab, read_video_manifest, tag_vocab
from mmpretrain.video.io.shards import manifest_samples

ENCODER = "encoder=timm:test_resnet"  # a stock timm architecture at seeded random init (RANDOM): no download
RANDOM = "random_init=true"


def _make_shards(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """Run scripts/make_shards.py as its command line does."""
    spec = importlib.util.spec_from_file_location("make_shards", Path(__file__).parents[1] / "scripts/make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["make_shards.py", *args])
    module.main()


@pytest.fixture(scope="module")
def labeled_shards(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("labeled_shards")
    with pytest.MonkeyPatch.context() as mp:
        _make_shards(mp, str(demo_root / "train"), str(out), "--prefix", "train", "--maxcount", "12")
        _make_shards(mp, str(demo_root / "val"), str(out), "--prefix", "val", "--maxcount", "8")
    return {"train": str(out / "train-{000000..000003}.tar"), "val": str(out / "val-{000000..000001}.tar"),
            "folder": str(out)}


def test_make_shards_records_the_folder_class_list(labeled_shards: dict[str, str], demo_root: Path) -> None:
    index = json.loads((Path(labeled_shards["folder"]) / INDEX_FILE).read_text())
    classes = labeled_folder(demo_root / "train").classes
    assert index["classes"] == classes and index["tags"] == []
    assert sum(v for k, v in index["counts"].items() if k.startswith("train")) == 48
    assert sum(v for k, v in index["counts"].items() if k.startswith("val")) == 16
    assert shard_vocabulary(expand_shards(labeled_shards["train"]))["classes"] == classes


def test_vocabulary_without_shards_json_is_read_from_the_samples(labeled_shards: dict[str, str], tmp_path: Path,
                                                                 demo_root: Path) -> None:
    urls = expand_shards(labeled_shards["train"])
    copies = []
    for url in urls:  # the same shards in a folder without shards.json (as another tool would leave them)
        copies.append(tmp_path / Path(url).name)
        copies[-1].write_bytes(Path(url).read_bytes())
    assert shard_vocabulary([str(p) for p in copies])["classes"] == labeled_folder(demo_root / "train").classes
    ints = tmp_path / "ints"
    write_shards(iter({"__key__": f"k{i}", "png": b"x", "cls": str(i % 3)} for i in range(6)), ints)
    (ints / INDEX_FILE).unlink()
    assert shard_vocabulary([str(ints / "shard-000000.tar")])["classes"] == ["0", "1", "2"]


def _eval(overrides: list[str], out: Path) -> tuple[dict, dict]:
    loaders = [] if "task=fewshot" in overrides else ["data.num_workers=0"]  # few-shot's data group has no loader
    return evaluate(compose_cfg("eval.yaml", [ENCODER, RANDOM, *loaders, "trainer=cpu", "data.batch_size=16",
                                              *overrides], out))


def test_knn_from_shards_equals_knn_from_folders(labeled_shards: dict[str, str], demo_root: Path,
                                                 tmp_path: Path) -> None:
    folder, _ = _eval([f"data.train_root={demo_root}/train", f"data.val_root={demo_root}/val"], tmp_path / "folder")
    shards, s_objects = _eval([f"data.shards='{labeled_shards['train']}'",
                               f"data.val_shards='{labeled_shards['val']}'"], tmp_path / "shards")
    assert shards == folder and set(shards) == {"knn/top1", "knn/top5"}
    # the same label for the same image: keys are the folder paths, made flat
    datamodule = s_objects["datamodule"]
    from_shards = {}
    for batch in datamodule.eval_loaders()[1]:
        from_shards.update(zip(batch["key"], batch["label"].tolist()))
    source = labeled_folder(demo_root / "val")
    expected = {str(Path(p).relative_to(demo_root / "val").with_suffix("")).replace("/", "__"): label
                for p, label in zip(source.paths, source.labels)}
    assert from_shards == expected and datamodule.num_classes == len(source.classes)


def test_linear_probe_trains_from_shards(labeled_shards: dict[str, str], tmp_path: Path) -> None:
    metrics, objects = _eval([f"data.shards='{labeled_shards['train']}'", f"data.val_shards='{labeled_shards['val']}'",
                              "task=linear", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path)
    assert set(metrics) == {"linear/top1", "linear/top5"} and 0 <= metrics["linear/top1"] <= 100
    assert objects["trainer"].global_step == 48 // 16


def test_fewshot_from_shards_equals_fewshot_from_the_folder(labeled_shards: dict[str, str], demo_root: Path,
                                                            tmp_path: Path) -> None:
    common = ["task=fewshot", "n_way=3", "n_shot=[1,2]", "n_query=4", "episodes=20", "plot=false",
              "methods=[simpleshot,protonet]", "progress=false"]
    folder, f_objects = _eval([*common, f"data.root={demo_root}/train"], tmp_path / "folder")
    shards, s_objects = _eval([*common, f"data.shards='{labeled_shards['train']}'"], tmp_path / "shards")
    assert shards == folder and len(folder) == 8  # 2 methods x 2 shots x (acc, ci95)
    # the same (label, embedding) rows: sorted by label, then by the first feature
    rows = [np.lexsort((o["features"][:, 0], o["labels"])) for o in (s_objects, f_objects)]
    np.testing.assert_array_equal(s_objects["labels"][rows[0]], f_objects["labels"][rows[1]])
    np.testing.assert_allclose(s_objects["features"][rows[0]], f_objects["features"][rows[1]], atol=1e-5)


def test_labeled_shard_errors_name_the_key(labeled_shards: dict[str, str], demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("set both data.shards and data.val_shards")):
        _eval([f"data.shards='{labeled_shards['train']}'"], tmp_path / "a")
    with pytest.raises(ConfigError, match=re.escape("data.root=... or data.shards=..., not both")):
        _eval(["task=fewshot", f"data.root={demo_root}/train", f"data.shards='{labeled_shards['train']}'"],
              tmp_path / "b")
    unlabeled = tmp_path / "unlabeled"
    write_shards(iter({"__key__": f"k{i}", "png": b"x"} for i in range(4)), unlabeled)
    with pytest.raises(DataError, match=r"data.val_shards=.*no sample has a label"):
        _eval([f"data.shards='{labeled_shards['train']}'", f"data.val_shards={unlabeled}/shard-000000.tar"],
              tmp_path / "c")
    other = tmp_path / "other"
    write_shards(iter({"__key__": f"k{i}", "png": b"x", "json": json.dumps({"label": "zebra"})} for i in range(4)),
                 other)
    with pytest.raises(ConfigError, match=re.escape("data.shards and data.val_shards have different classes")):
        _eval([f"data.shards='{labeled_shards['train']}'", f"data.val_shards={other}/shard-000000.tar"],
              tmp_path / "d")


# ----------------------------------------------------------------------------------------------- video fine-tuning


def _finetune(task: str, video_demo, video_pretrained: Path, video_shards: dict[str, str], out: Path,
              *extra: str) -> tuple[dict, dict]:
    from mmpretrain.cli.train import train

    return train(compose_cfg("train.yaml", [
        f"experiment=video_{task}_demo", "logger=csv", "trainer=cpu", "data.train_manifest=null",
        "data.val_manifest=null", f"data.shards='{video_shards['train']}'", f"data.val_shards={video_shards['val']}",
        "data.batch_size=4", "data.num_workers=0", "data.require_caption=false", f"model.pretrained={video_pretrained}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra], out))


@pytest.mark.parametrize("task", ["classify", "tagging"])
def test_video_finetuning_from_shards_sees_the_manifest_labels(task: str, video_demo, video_pretrained: Path,
                                                                video_shards: dict[str, str], tmp_path: Path) -> None:
    metrics, objects = _finetune(task, video_demo, video_pretrained, video_shards, tmp_path, "debug=fdr")
    assert torch.isfinite(metrics["train/loss"])
    records = read_video_manifest(video_demo["train"]) + read_video_manifest(video_demo["val"])
    names = label_vocab(records) if task == "classify" else tag_vocab(records)
    model, datamodule = objects["model"], objects["datamodule"]
    assert model.names == names and model.head[-1].out_features == len(names)
    by_id = {r.id.replace(".", "_"): r for r in records}
    seen = 0
    for batch in datamodule.train_dataloader():
        for i, key in enumerate(batch["id"]):
            record = by_id[key]
            if task == "classify":
                assert batch["label"][i].item() == names.index(record.label)
            else:
                want = torch.zeros(len(names))
                want[[names.index(t) for t in record.tags]] = 1
                assert torch.equal(batch["tags"][i], want)
            seen += 1
    assert seen >= len(read_video_manifest(video_demo["train"]))


def test_video_shards_without_labels_or_with_weighting_are_refused(video_demo, video_pretrained: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "nolabel"
    samples = [{**s, "json": json.dumps({"caption": "x"})} for s in manifest_samples(video_demo["val"])]
    write_shards(iter(samples), out, prefix="train")
    write_shards(iter(samples), out, prefix="val")
    shards = {"train": str(out / "train-000000.tar"), "val": str(out / "val-000000.tar")}
    with pytest.raises(DataError, match=r"data.with_labels=true but no sample of data.shards=.* has a 'label'"):
        _finetune("classify", video_demo, video_pretrained, shards, tmp_path / "a", "debug=fdr")
    with pytest.raises(DataError, match=r"data.with_tags=true but no sample of data.shards=.* has 'tags'"):
        _finetune("tagging", video_demo, video_pretrained, shards, tmp_path / "b", "debug=fdr")
    labeled = tmp_path / "labeled"
    write_shards(manifest_samples(video_demo["val"]), labeled, prefix="train")
    write_shards(manifest_samples(video_demo["val"]), labeled, prefix="val")
    shards = {"train": str(labeled / "train-000000.tar"), "val": str(labeled / "val-000000.tar")}
    with pytest.raises(ConfigError, match=re.escape("class_weighting=inverse_sqrt needs the training label counts")):
        _finetune("tagging", video_demo, video_pretrained, shards, tmp_path / "c", "debug=fdr",
                  "model.class_weighting=inverse_sqrt")
