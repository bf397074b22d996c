"""The few-shot application's deployment and labelling aids: ONNX / TorchScript export of Swin, ViT and ResNet
encoders and of a classifier, run with onnxruntime against PyTorch; suggestions of what to label next."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import TINY_SWIN
from PIL import Image
from test_fewshot_app import RESNET, clusters, images, tiny_checkpoint

from mmpretrain.cli.hub import main as hub_main
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.fewshot import (
    FewShotModel,
    export_classifier,
    export_encoder,
    fit_classifier,
    predict_files,
    suggest,
)
from mmpretrain.fewshot.encoding import open_encoder
from mmpretrain.fewshot.selection import margins, select

SWIN = {"name": TINY_SWIN["backbone"], "kwargs": TINY_SWIN["backbone_kwargs"]}
VIT = {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1,
                                                   "num_heads": 2}}


def preprocessed(record: dict, pictures: list[np.ndarray]) -> np.ndarray:
    """The float batch the exported file takes, built from the JSON beside it as docs/fewshot.md does it."""
    pre = record["preprocessing"]
    batch = []
    for pixels in pictures:
        image = Image.fromarray(pixels)
        short, size, crop = min(image.size), pre["resize_short_side"], pre["center_crop"]
        w, h = (size, int(size * image.height / short)) if image.width == short else \
            (int(size * image.width / short), size)
        image = image.resize((w, h), getattr(Image.Resampling, pre["interpolation"].upper()))
        left, top = round((w - crop) / 2), round((h - crop) / 2)
        image = image.crop((left, top, left + crop, top + crop))
        batch.append((np.asarray(image, np.float32) / 255 - pre["mean"]) / pre["std"])
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)


def pictures(n: int = 3, size: int = 32) -> list[np.ndarray]:
    """Random pictures of several shapes (portrait, landscape, square), so resizing and cropping are exercised."""
    rng = np.random.default_rng(0)
    shapes = [(size + 7, size - 3), (size - 5, size + 12), (size, size)]
    return [rng.integers(0, 256, size=(*shapes[i % 3], 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("arch", [SWIN, VIT, RESNET], ids=["swin", "vit", "resnet"])
def test_encoders_export_to_onnx_and_onnxruntime_matches_pytorch(arch: dict, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "ckpt", arch)
    record = export_encoder(str(ckpt), tmp_path / "encoder.onnx")
    assert record == json.loads((tmp_path / "encoder.onnx.json").read_text())
    assert record["parity"]["max_difference"] <= record["parity"]["tolerance"] == 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    batch = pictures(5)
    (got,) = session.run(None, {"images": preprocessed(record, batch)})
    want = open_encoder(str(ckpt), device="cpu").encoder.encode_images(batch, normalize=False)
    assert got.shape == want.shape == (5, record["embed_dim"])
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_a_classifier_exports_to_onnx_and_torchscript_with_its_decision_rule(tmp_path: Path) -> None:
    support = images(tmp_path / "support", size=32)
    model = fit_classifier(support, str(tiny_checkpoint(tmp_path / "ckpt", RESNET)), tmp_path / "clf")
    model.threshold = float(np.median(model.predict(pictures(6)).similarity))   # some of them unknown
    model.save(tmp_path / "clf")
    batch = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((support / "class0").iterdir())] + pictures(6)
    want = model.predict(batch)
    for name in ("clf.onnx", "clf.pt"):
        record = export_classifier(tmp_path / "clf", tmp_path / name, format="onnx" if name.endswith("x") else
                                   "torchscript")
        assert record["classes"] == model.classes and record["threshold"] == model.threshold
        x = preprocessed(record, batch)
        if name.endswith(".onnx"):
            session = onnxruntime.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
            probabilities, similarity = session.run(None, {"images": x})
        else:
            with torch.no_grad():
                probabilities, similarity = (t.numpy() for t in torch.jit.load(str(tmp_path / name))(
                    torch.from_numpy(x)))
        np.testing.assert_allclose(probabilities, want.probabilities, atol=1e-4)
        np.testing.assert_allclose(similarity, want.similarity, atol=1e-4)
        predicted = [record["classes"][i] if s >= record["threshold"] else record["unknown"]
                     for i, s in zip(probabilities.argmax(axis=1), similarity)]
        assert predicted == want.predicted and "unknown" in predicted


def test_export_refuses_a_file_beyond_the_tolerance_and_unknown_formats(tmp_path: Path) -> None:
    ckpt = str(tiny_checkpoint(tmp_path / "ckpt", SWIN))
    with pytest.raises(DataError, match="differs from PyTorch"):
        export_encoder(ckpt, tmp_path / "swin.onnx", tolerance=1e-12)
    assert not (tmp_path / "swin.onnx").exists() and not (tmp_path / "swin.onnx.json").exists()
    with pytest.raises(ConfigError, match="format=tflite"):
        export_encoder("pixels", tmp_path / "x.tflite", format="tflite")


def test_hub_export_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "pixels.pt"
    assert hub_main(["export", "pixels:8", "format=torchscript", f"output={out}"]) == 0
    assert json.loads(capsys.readouterr().out)["parity"]["max_difference"] == 0.0
    assert torch.jit.load(str(out))(torch.zeros(2, 3, 8, 8)).shape == (2, 64)
    assert hub_main(["export", "pixels", "fromat=onnx", f"output={out}"]) == 1
    assert "'fromat=onnx': expected one of format=, output=, tolerance=" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- suggest


def test_selection_trades_uncertainty_against_diversity() -> None:
    rng = np.random.default_rng(0)
    support = rng.normal(size=(4, 8)).astype(np.float32)
    far = rng.normal(size=8).astype(np.float32) * 5
    pool = np.concatenate([far + 0.01 * rng.normal(size=(5, 8)), rng.normal(size=(20, 8))]).astype(np.float32)
    margin = np.linspace(0.05, 0.95, len(pool)).astype(np.float32)
    order, _ = select(pool, margin, support, n=5, weight=0.0)
    assert order.tolist() == [0, 1, 2, 3, 4]                 # uncertainty alone: the five near-copies
    order, distance = select(pool, margin, support, n=5, weight=1.0)
    assert sum(i < 5 for i in order) <= 1                    # diversity: never two of the near-copies
    assert np.all(np.diff(distance) <= 1e-6)                 # k-center: each pick covers less than the one before
    assert margins(np.array([[0.7, 0.2, 0.1]]))[0] == pytest.approx(0.5)
    order, _ = select(pool, margin, support, n=30, weight=0.0, exclude=np.arange(25) < 3)
    assert order.tolist() == list(range(3, 25))              # the excluded never, and no more than are left
    with pytest.raises(ConfigError, match=r"weight=2"):
        select(pool, margin, support, weight=2)


def test_suggest_writes_json_lines_and_a_contact_sheet(tmp_path: Path) -> None:
    support = images(tmp_path / "support")
    pool = images(tmp_path / "pool", per_class=6)
    fit_classifier(support, "pixels:8", tmp_path / "clf")
    records = suggest(tmp_path / "clf", pool, tmp_path / "out", n=5, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out/suggest.jsonl").read_text().splitlines()]
    assert lines == records and [r["rank"] for r in records] == [1, 2, 3, 4, 5]
    assert len({r["id"] for r in records}) == 5 and all(Path(r["path"]).is_file() for r in records)
    assert Image.open(tmp_path / "out/suggest.png").size == (960, 120)
    again = suggest(tmp_path / "clf", support, tmp_path / "again", n=5, progress=False)
    assert again == []                                       # every picture of the pool is already labelled


def test_suggest_from_an_embedding_store(tmp_path: Path) -> None:
    from mmpretrain.embeddings import write_store

    handle = open_encoder("pixels:4", device="cpu")
    FewShotModel.fit(handle, *clusters(3, 4)).save(tmp_path / "clf")
    pool, _ = clusters(3, 10, seed=5)
    write_store(tmp_path / "store", pool, {"id": [f"p{i}" for i in range(30)]}, encoder="pixels:4", normalized=False)
    records = suggest(tmp_path / "clf", tmp_path / "store", tmp_path / "out", n=4)
    assert len(records) == 4 and all(r["id"].startswith("p") and r["path"] is None for r in records)
    write_store(tmp_path / "wide", np.zeros((2, 5), np.float32), {"id": ["a", "b"]}, encoder="other", normalized=False)
    with pytest.raises(ConfigError, match="5-d embeddings"):
        suggest(tmp_path / "clf", tmp_path / "wide", tmp_path / "out")


def test_a_classifier_fitted_on_a_normalised_store_reads_normalised_embeddings(tmp_path: Path) -> None:
    from mmpretrain.embeddings import write_store

    support = images(tmp_path / "support", size=16)
    files = sorted(str(p) for p in support.glob("*/*.png"))
    handle = open_encoder("pixels:8", device="cpu")
    rows = handle.encoder.encode_images(files, normalize=True)
    labels = [Path(f).parent.name for f in files]
    write_store(tmp_path / "normed", rows, {"id": files, "path": files, "label": labels}, encoder="pixels:8",
                normalized=True)
    model = fit_classifier(tmp_path / "normed", output=tmp_path / "clf")      # the encoder named by the store
    assert model.normalized and json.loads((tmp_path / "clf/classifier.json").read_text())["normalized"]
    np.testing.assert_allclose(model.embed(files[:2]), rows[:2], atol=1e-6)
    from_images = predict_files(tmp_path / "clf", support, tmp_path / "a.jsonl", progress=False)
    from_store = predict_files(tmp_path / "clf", tmp_path / "normed", tmp_path / "b.jsonl", progress=False)
    assert from_images["predicted"] == from_store["predicted"] and from_store["count"] == 12
    raw = rows * 3.0
    write_store(tmp_path / "raw", raw, {"id": files, "label": labels}, encoder="pixels:8", normalized=False)
    fit_classifier(tmp_path / "raw", output=tmp_path / "raw_clf")
    with pytest.raises(ConfigError, match="L2-normalised rows"):
        predict_files(tmp_path / "raw_clf", tmp_path / "normed", tmp_path / "c.jsonl")
