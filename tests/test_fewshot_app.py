"""The few-shot application: fit a classifier folder, load it, predict (Python and console script), calibration and
"unknown" measured on held-out and never-fitted classes, the estimate's CI against a held-out measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from mmpretrain.encoders import ImageEncoder
from mmpretrain.errors import ConfigError, DataError, MissingPathError, PathExistsError
from mmpretrain.fewshot import (
    FewShotModel,
    estimate,
    estimate_embeddings,
    fit_classifier,
    load_classifier,
    predict_files,
)
from mmpretrain.fewshot.calibration import choose_threshold, fit_temperature
from mmpretrain.fewshot.encoding import EncoderHandle, open_encoder, write_encoder

BIN = Path(sys.executable).parent
RESNET = {"name": "test_resnet", "kwargs": {}}


def tiny_checkpoint(folder: Path, arch: dict, size: int = 32, seed: int = 0) -> Path:
    """A tiny timm backbone written as an own checkpoint folder (model.safetensors + config), no download."""
    torch.manual_seed(seed)
    model = timm.create_model(arch["name"], pretrained=False, num_classes=0, **arch["kwargs"])
    preprocessing = {"image_size": size, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5] * 3,
                     "std": [0.5] * 3}
    encoder = ImageEncoder(model, preprocessing, f"tiny-{arch['name']}", device="cpu")
    config = {"name": encoder.name, "architecture": arch, "preprocessing": preprocessing}
    write_encoder(EncoderHandle(encoder, str(folder), config), folder)
    return folder


def clusters(n_classes: int, per_class: int, dim: int = 16, noise: float = 0.6, seed: int = 0, offset: int = 0,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around seeded random centers; ``offset`` shifts the class ids (and centers) drawn."""
    rng = np.random.default_rng(1000 + seed)
    centers = np.random.default_rng(offset).normal(size=(offset + n_classes, dim))[offset:]
    labels = np.repeat(np.arange(n_classes), per_class)
    features = centers[labels] + noise * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), np.array([f"c{offset + i}" for i in labels])


def images(root: Path, n_classes: int = 3, per_class: int = 4, size: int = 16) -> Path:
    """Labelled PNGs (a subfolder per class): class c is bright in its own third of the picture."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            pixels[:, c * size // n_classes:(c + 1) * size // n_classes] += 180
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def pixels() -> EncoderHandle:
    return open_encoder("pixels:4", device="cpu")


# ---------------------------------------------------------------------------------------------- calibration


def test_temperature_minimises_nll_and_threshold_accepts_the_stated_share() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=200)
    scores = rng.normal(size=(200, 3)) + 3.0 * np.eye(3)[codes]
    t = fit_temperature(scores, codes)
    logits = torch.as_tensor(scores)
    nll = [float(F.cross_entropy(logits / (t * f), torch.as_tensor(codes))) for f in (0.9, 1.0, 1.1)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    similarity = rng.uniform(size=1000)
    threshold = choose_threshold(similarity, 0.9)
    assert (similarity >= threshold).mean() >= 0.9 and (similarity > threshold).mean() < 0.9
    with pytest.raises(ConfigError, match=r"accept_rate=1\.5"):
        choose_threshold(similarity, 1.5)


def test_calibration_on_held_out_known_classes_and_never_fitted_classes(pixels: EncoderHandle) -> None:
    support, labels = clusters(5, 8, seed=0)
    model = FewShotModel.fit(pixels, support, labels, accept_rate=0.95)
    cal = model.calibration
    assert cal.threshold_source == "leave-one-out" and cal.rows == 40 and cal.loo_accepted >= 0.95
    known, known_labels = clusters(5, 200, seed=1)
    novel, _ = clusters(5, 200, seed=2, offset=5)
    on_known, on_novel = model.predict_embeddings(known), model.predict_embeddings(novel)
    accepted = on_known.known.mean()
    assert 0.85 <= accepted <= 1.0, accepted                 # ~0.95 of new known-class pictures kept
    assert (np.array(on_novel.predicted) == "unknown").mean() >= 0.8   # classes never fitted: "none of these"
    truth = np.searchsorted(model.classes, known_labels)
    nll = -np.log(on_known.probabilities[np.arange(len(truth)), truth]).mean()
    raw = torch.softmax(torch.as_tensor(model.classifier.scores(known)), -1).numpy()
    nll_raw = -np.log(raw[np.arange(len(truth)), truth]).mean()
    assert nll < nll_raw                                     # the fitted temperature helps on held-out pictures
    model.threshold = 2.0                                    # by hand: above any cosine, so everything is unknown
    assert set(model.predict_embeddings(known).predicted) == {"unknown"}
    assert model.calibration.threshold_source == "manual"


def test_one_picture_per_class_cannot_be_calibrated_but_a_threshold_can_be_set(pixels: EncoderHandle) -> None:
    support, labels = clusters(4, 1)
    model = FewShotModel.fit(pixels, support, labels)
    assert (model.calibration.rows, model.threshold, model.temperature) == (0, None, 1.0)
    assert "estimate" not in model.info
    manual = FewShotModel.fit(pixels, support, labels, threshold=0.5)
    assert manual.threshold == 0.5 and manual.calibration.threshold_source == "manual"


def test_random_timm_is_built_without_weights_and_saved_with_its_own() -> None:
    handle = open_encoder("random:timm:test_resnet", device="cpu")
    again = open_encoder("random:timm:test_resnet", device="cpu")
    assert handle.random_init and handle.encoder.name == "random init of timm:test_resnet"
    assert handle.weights_sha256 == again.weights_sha256        # seeded: the same floor every time
    assert handle.config["architecture"] == {"name": "test_resnet", "kwargs": {}}
    with pytest.raises(ConfigError, match="timm has no model 'test_resnett'"):
        open_encoder("random:timm:test_resnett")


def test_refused_methods_and_labels(pixels: EncoderHandle) -> None:
    support, labels = clusters(3, 3)
    with pytest.raises(ConfigError, match="transductive"):
        FewShotModel.fit(pixels, support, labels, method="soft_kmeans")
    with pytest.raises(DataError, match="'unknown'"):
        FewShotModel.fit(pixels, support, np.where(labels == "c0", "unknown", labels))
    with pytest.raises(DataError, match="at least 2 classes"):
        FewShotModel.fit(pixels, support[:3], labels[:3])


# ---------------------------------------------------------------------------------------------- estimate


def test_estimate_ci_covers_a_held_out_measurement() -> None:
    support, labels = clusters(6, 6, noise=1.4, seed=3)
    report = estimate_embeddings(support, labels, shots=(1, 2, 5), trials=10, seed=0)
    assert report.protocol == "leave-one-out" and report.rows == 36
    low, high = report.ci95
    assert low < report.accuracy < high and 30 < report.accuracy < 95
    queries, truth = clusters(6, 500, noise=1.4, seed=4)
    model = FewShotModel.fit(open_encoder("pixels:4", device="cpu"), support, labels)
    best = model.predict_embeddings(queries).probabilities.argmax(axis=1)
    measured = (np.array(model.classes)[best] == truth).mean() * 100
    assert low <= measured <= high, (low, measured, high)
    assert [p["shots"] for p in report.curve] == [1, 2, 5]
    assert report.curve[0]["accuracy"] < report.curve[-1]["accuracy"]
    assert np.asarray(report.confusion).sum() == 36 and set(report.per_class) == set(np.unique(labels))


def test_estimate_switches_to_stratified_folds_past_the_limit() -> None:
    features, labels = clusters(3, 20)
    report = estimate_embeddings(features, labels, loo_limit=30, shots=(), folds=5)
    assert report.protocol == "stratified 5-fold" and report.rows == 60 and report.accuracy > 90
    with pytest.raises(DataError, match="single picture"):
        estimate_embeddings(*clusters(3, 1))
    with pytest.raises(ConfigError, match="method=finetune: estimate takes one of"):
        estimate_embeddings(features, labels, method="finetune")


def test_estimate_compares_encoders_in_one_table_and_png(tmp_path: Path) -> None:
    support = images(tmp_path / "support", per_class=4)
    ckpt = tiny_checkpoint(tmp_path / "resnet", RESNET)
    results = estimate(support, ["pixels:8", str(ckpt), f"random:{ckpt}"], tmp_path / "out", shots=(1, 2),
                       trials=3)
    assert [r.encoder for r in results] == ["pixels:8", "tiny-test_resnet", f"random init of {ckpt}"]
    assert results[2].random_init and not results[1].random_init
    record = json.loads((tmp_path / "out/estimate.json").read_text())
    assert len(record["estimates"]) == 3 and record["estimates"][0]["accuracy"] == results[0].accuracy
    table = (tmp_path / "out/estimate.md").read_text()
    assert "pixels:8" in table and "2-shot" in table
    assert Image.open(tmp_path / "out/estimate.png").size[0] > 500
    with pytest.raises(ConfigError, match="needs encoder="):
        estimate(support, [], tmp_path / "out")


# ---------------------------------------------------------------------------------------------- the folder


def test_fit_save_load_predict_with_an_embedded_encoder(tmp_path: Path) -> None:
    support = images(tmp_path / "support")
    ckpt = tiny_checkpoint(tmp_path / "resnet", RESNET)
    model = fit_classifier(support, str(ckpt), tmp_path / "clf", method="logreg")
    names = sorted(p.name for p in (tmp_path / "clf").iterdir())
    assert names == ["README.md", "classifier.json", "classifier.safetensors", "encoder"]
    config = json.loads((tmp_path / "clf/classifier.json").read_text())
    assert config["classes"] == ["class0", "class1", "class2"] and config["counts"]["class1"] == 4
    assert config["encoder"]["embedded"] and config["method"] == "logreg"
    assert config["estimate"]["protocol"] == "leave-one-out" and config["package"]["version"]
    card = (tmp_path / "clf/README.md").read_text()
    assert "tiny-test_resnet" in card and "| class2 | 4 |" in card and "estimated accuracy" in card
    import shutil

    shutil.rmtree(ckpt)                                       # loading needs nothing but the folder
    loaded = load_classifier(tmp_path / "clf", device="cpu")
    files = sorted(str(p) for p in (support / "class2").iterdir())
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    a, b = model.predict(files), loaded.predict(arrays)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert a.predicted == b.predicted and loaded.threshold == model.threshold
    assert len(a.top(2)[0]) == 2 and a.top(2)[0][0][1] >= a.top(2)[0][1][1]


def test_a_referenced_encoder_is_checked_against_its_sha256(tmp_path: Path) -> None:
    support = images(tmp_path / "support")
    ckpt = tiny_checkpoint(tmp_path / "resnet", RESNET)
    fit_classifier(support, str(ckpt), tmp_path / "clf", embed_encoder=False)
    assert not (tmp_path / "clf/encoder").exists()
    config = json.loads((tmp_path / "clf/classifier.json").read_text())
    assert config["encoder"]["spec"] == str(ckpt) and len(config["encoder"]["weights_sha256"]) == 64
    load_classifier(tmp_path / "clf", device="cpu")
    tiny_checkpoint(ckpt, RESNET, seed=1)                      # the checkpoint changed under the classifier
    with pytest.raises(DataError, match="not those the classifier was fitted with"):
        load_classifier(tmp_path / "clf", device="cpu")


def test_folder_errors(tmp_path: Path, pixels: EncoderHandle) -> None:
    with pytest.raises(MissingPathError, match=r"classifier\.json"):
        load_classifier(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    model = FewShotModel.fit(pixels, *clusters(2, 3))
    with pytest.raises(PathExistsError, match="not a classifier folder"):
        model.save(tmp_path / "other")
    model.save(tmp_path / "clf")
    (tmp_path / "clf/classifier.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_classifier(tmp_path / "clf")


def test_predict_files_writes_one_line_per_picture(tmp_path: Path) -> None:
    support = images(tmp_path / "support")
    fit_classifier(support, "pixels:8", tmp_path / "clf")
    summary = predict_files(tmp_path / "clf", support, tmp_path / "preds.jsonl", top_k=2, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert summary["count"] == len(lines) == 12
    assert set(lines[0]) == {"id", "path", "labels", "predicted", "similarity"} and len(lines[0]["labels"]) == 2
    assert lines[0]["id"] == "class0/0.png" and Path(lines[0]["path"]).is_file()
    assert sum(line["predicted"] == line["id"].split("/")[0] for line in lines) >= 10
    (support / "class1/broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1 of 13 pictures could not be read.*broken\.png"):
        predict_files(tmp_path / "clf", support, tmp_path / "preds.jsonl", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    broken = [line for line in lines if "error" in line]
    assert len(lines) == 13 and [b["id"] for b in broken] == ["class1/broken.png"]
    assert "cannot read image" in broken[0]["error"] and "predicted" not in broken[0]


@pytest.mark.slow
def test_console_script_fit_and_predict(tmp_path: Path) -> None:
    support = images(tmp_path / "support")
    run = [str(BIN / "mmpretrain-fewshot")]
    env_cwd = {"cwd": tmp_path, "capture_output": True, "text": True}
    fit = subprocess.run([*run, "fit", f"support={support}", "encoder=pixels:8", "output=clf", "accept_rate=0.9"],
                         **env_cwd)
    assert fit.returncode == 0, fit.stderr
    assert json.loads(fit.stdout.splitlines()[-1])["calibration"]["accept_rate"] == 0.9
    picture = support / "class1/0.png"
    pred = subprocess.run([*run, "predict", "classifier=clf", f"input={picture}", "output=p.jsonl"], **env_cwd)
    assert pred.returncode == 0, pred.stderr
    assert json.loads((tmp_path / "p.jsonl").read_text())["predicted"] == "class1"
    missing = subprocess.run([*run, "fit", "support=nowhere", "encoder=pixels", "output=x"], **env_cwd)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines()[-1].startswith(
        "mmpretrain-fewshot: error: support=nowhere")
    bad = subprocess.run([*run, "fitt"], **env_cwd)
    assert bad.returncode == 2 and "unknown subcommand 'fitt'" in bad.stderr
    version = subprocess.run([*run, "--version"], **env_cwd)
    assert version.stdout.startswith("mmpretrain-fewshot ")


def test_every_subcommand_through_the_config_on_labelled_shards(tmp_path: Path) -> None:
    from conftest import compose_cfg

    from mmpretrain.cli.fewshot import fewshot_command
    from mmpretrain.data.shards import image_samples, write_shards

    root = images(tmp_path / "pictures")
    files = sorted(str(p) for p in root.glob("*/*.png"))
    write_shards(image_samples(files, root, [Path(f).parent.name for f in files]), tmp_path / "shards", maxcount=5)
    shards = f"{tmp_path}/shards/shard-{{000000..000002}}.tar"

    def run(*overrides: str) -> dict:
        return fewshot_command(compose_cfg("fewshot.yaml", list(overrides), tmp_path))

    fit = run("command=fit", f"support='{shards}'", "encoder=pixels:8", f"output={tmp_path}/clf", "method=protonet")
    assert fit["classes"] == ["class0", "class1", "class2"] and fit["estimate"]["rows"] == 12
    pred = run("command=predict", f"classifier={tmp_path}/clf", f"input='{shards}'", f"output={tmp_path}/p.jsonl")
    assert pred["count"] == 12 and json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["path"] is None
    est = run("command=estimate", f"support='{shards}'", "encoder=[pixels:4,pixels:8]", "shots=[1,2]", "trials=2")
    assert list(est["estimates"]) == ["pixels:4", "pixels:8"] and (tmp_path / "run/estimate.png").is_file()
    sug = run("command=suggest", f"classifier={tmp_path}/clf", f"pool='{shards}'", "n=3")
    assert sug["suggested"] == 3 and (tmp_path / "run/suggest.png").is_file()
    exp = run("command=export", f"classifier={tmp_path}/clf", "format=torchscript", f"output={tmp_path}/c.pt")
    assert exp["parity"]["max_difference"] <= 1e-4
    with pytest.raises(ConfigError, match="needs classifier=<classifier folder>"):
        run("command=predict", f"input='{shards}'", "output=x.jsonl")
    with pytest.raises(MissingPathError, match="shards do not exist"):
        run("command=fit", f"support={tmp_path}/shards/nope.tar", "encoder=pixels", "output=x")


def test_finetune_trains_a_head_that_is_saved_calibrated_and_exported(tmp_path: Path) -> None:
    from mmpretrain.fewshot import export_classifier, run_exported

    support = images(tmp_path / "support", size=32)
    ckpt = str(tiny_checkpoint(tmp_path / "ckpt", RESNET))
    model = fit_classifier(support, ckpt, tmp_path / "clf", method="finetune", views=2, steps=20)
    assert model.method == "finetune" and model.head["weight"].shape == (3, model.encoder.embed_dim)
    config = json.loads((tmp_path / "clf/classifier.json").read_text())
    assert config["method"] == "finetune" and config["method_kwargs"] == {"views": 2, "steps": 20}
    assert config["calibration"]["rows"] == 12 and config["estimate"]["protocol"] == "leave-one-out"
    loaded = load_classifier(tmp_path / "clf", device="cpu")
    files = sorted(str(p) for p in support.glob("*/*.png"))
    np.testing.assert_allclose(loaded.predict(files).probabilities, model.predict(files).probabilities, atol=1e-6)
    record = export_classifier(loaded, tmp_path / "clf.pt", format="torchscript")
    x = torch.randn(2, 3, 32, 32).numpy()
    probabilities, _ = run_exported(tmp_path / "clf.pt", x)
    want = loaded.predict_embeddings(loaded.encoder.backbone(torch.from_numpy(x)).detach().numpy()).probabilities
    np.testing.assert_allclose(probabilities, want, atol=1e-5)
    assert record["method"] == "finetune"
    with pytest.raises(ConfigError, match="takes steps, lr, scale"):
        FewShotModel.fit(model.handle, np.zeros((2, 4, model.encoder.embed_dim)), ["a", "a", "b", "b"],
                         method="finetune", l2=1.0)


def test_balanced_leave_one_out_drops_one_picture_of_every_class() -> None:
    from mmpretrain.fewshot.calibration import _held_out_index, leave_one_out

    codes = np.repeat(np.arange(3), [4, 3, 1])               # the last class has a single picture
    index = _held_out_index(codes, range(8), balanced=True, seed=0)
    assert index.shape == (8, 8 - 2)                          # itself, and one of the other class with two or more
    for row in range(7):
        kept = np.bincount(codes[index[row]], minlength=3)
        assert row not in index[row]
        assert kept.tolist() == [3, 2, 1]                     # every class one short (the single one kept)
    plain = _held_out_index(codes, range(8), balanced=False, seed=0)
    np.testing.assert_array_equal(_held_out_index(codes, range(3, 5), True, 0), index[3:5])  # chunks agree
    assert plain.shape == (8, 7) and all(row not in plain[row] for row in range(8))
    features, labels = clusters(3, 4)
    _, _, usable = leave_one_out(features, np.searchsorted(np.unique(labels), labels), 3)
    assert usable.all()


def test_every_command_in_the_user_guide_composes(tmp_path: Path) -> None:
    """The guide's commands name real subcommands and keys (composed as the console script would)."""
    import shlex

    from conftest import compose_cfg

    from mmpretrain.cli.fewshot import COMMANDS
    from mmpretrain.cli.hub import _export_settings

    guide = Path(__file__).parents[1] / "docs" / "fewshot.md"
    lines = [line.removeprefix("$ ") for line in guide.read_text().splitlines()
             if line.startswith(("mmpretrain-", "$ mmpretrain-"))]
    assert len(lines) >= 10
    for line in lines:
        tokens = shlex.split(line.split("#")[0])
        if tokens[0] == "mmpretrain-hub":
            assert tokens[1] == "export" and _export_settings(tokens[3:])["output"]
            continue
        assert tokens[0] == "mmpretrain-fewshot" and tokens[1] in COMMANDS, line
        cfg = compose_cfg("fewshot.yaml", [f"command={tokens[1]}", *tokens[2:]], tmp_path)
        assert cfg.command == tokens[1]


def test_help_lists_the_subcommands_and_every_key(capsys: pytest.CaptureFixture) -> None:
    from mmpretrain.cli.entry import task_help
    from mmpretrain.cli.fewshot import main

    text = task_help("mmpretrain-fewshot", [])
    assert text.startswith("usage: mmpretrain-fewshot {fit|predict|estimate|suggest|export} key=value")
    for key in ("support=", "encoder=", "accept_rate=0.95", "classifier=", "pool=", "format=onnx", "views=8"):
        assert f"  {key}" in text, key
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "no subcommand; choose fit|predict|estimate|suggest|export" in \
        capsys.readouterr().err
