"""One file to deploy: an encoder (and a few-shot classifier's head) as ONNX or TorchScript, checked against PyTorch.

The exported graph takes a preprocessed float32 batch ``(N, 3, S, S)`` (resized, centre-cropped, scaled to [0, 1],
normalised by mean and std, all recorded in the JSON written beside the file) and returns ``embeddings`` for an
encoder, or ``probabilities`` (N, C, calibrated) and ``similarity`` (N, the nearest-prototype cosine the unknown
threshold compares) for a classifier. Right after writing, the file is loaded back and run on a batch; the largest
difference from PyTorch is recorded in the JSON and must stay under ``tolerance``.

Usage::

    from mmpretrain.fewshot import export_classifier, export_encoder
    export_classifier("my_classifier", "clf.onnx")                 # + clf.onnx.json
    export_encoder("timm:resnet18", "resnet18.pt", format="torchscript")
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain._io import write_text_atomic
from mmpretrain.errors import ConfigError, DataError
from mmpretrain.fewshot.calibration import prototype_similarity
from mmpretrain.fewshot.encoding import EncoderHandle, open_encoder
from mmpretrain.fewshot.head import head_scores
from mmpretrain.fewshot.methods import get_method
from mmpretrain.fewshot.model import UNKNOWN, FewShotModel, load_classifier

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "export_classifier", "export_encoder", "run_exported"]

FORMATS = ("onnx", "torchscript")
INPUT = "images"


class _Head(nn.Module):
    """The fitted classifier as a module: calibrated probabilities and nearest-prototype similarity of embeddings."""

    def __init__(self, model: FewShotModel) -> None:
        super().__init__()
        clf = model.classifier
        self.register_buffer("support", clf.support_features.clone())
        self.register_buffer("codes", clf.support_codes.clone())
        self.register_buffer("center", clf.base_mean.clone())
        self.n_classes = len(model.classes)
        self.temperature = float(model.temperature)
        self.register_buffer("head_weight", None if model.head is None else model.head["weight"].clone())
        self.head_scale = 10.0 if model.head is None else float(model.head.get("scale", 10.0))
        self.method = get_method(clf.method)
        self.options = dict(clf.method_kwargs)
        parameters = inspect.signature(self.method).parameters
        if "base_mean" in parameters:
            self.options["base_mean"] = self.center
        if "k" in parameters and self.options.get("k") is None:  # knn's default, fixed now: shapes are traced
            shots = self.support.shape[0]
            self.options["k"] = min(shots, max(1, round(shots / self.n_classes)))

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        support, codes, query = self.support[None], self.codes[None], embeddings[None]
        if self.head_weight is not None:
            scores = head_scores(self.head_weight, self.head_scale, embeddings)
        else:
            scores = self.method(support, codes, query, self.n_classes, **self.options)[0]
        similarity = prototype_similarity(support, codes, query, self.n_classes, self.center)[0].max(dim=-1).values
        return torch.softmax(scores / self.temperature, dim=-1), similarity


class _Deployed(nn.Module):
    """Backbone, then the head when there is one: the whole graph that is exported."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, normalize: bool = False) -> None:
        super().__init__()
        self.backbone, self.head, self.normalize = backbone, head, normalize

    def forward(self, images: torch.Tensor) -> Any:
        features = self.backbone(images)
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return features if self.head is None else self.head(features)


def _preprocessing(handle: EncoderHandle) -> dict[str, Any]:
    enc = handle.encoder
    return {"input": INPUT, "shape": ["batch", 3, enc.transform.image_size, enc.transform.image_size],
            "dtype": "float32", "layout": "NCHW, RGB", "resize_short_side": enc.transform.resize_to,
            "center_crop": enc.transform.image_size, "interpolation": enc.transform.interpolation.value,
            "scale": "pixel / 255", "mean": enc.mean, "std": enc.std,
            "formula": "(pixel / 255 - mean) / std per channel"}


def _write(module: nn.Module, example: torch.Tensor, path: Path, fmt: str, outputs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about Python values in timm's shape checks
            if fmt == "torchscript":
                torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(tmp))
            else:
                torch.onnx.export(module, (example,), str(tmp), input_names=[INPUT], output_names=outputs,
                                  dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                                  opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_exported(path: str | os.PathLike, images: np.ndarray) -> list[np.ndarray]:
    """Run an exported file on a preprocessed float32 batch: onnxruntime for ``.onnx``, TorchScript otherwise."""
    path = Path(path)
    batch = np.ascontiguousarray(images, dtype=np.float32)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return list(session.run(None, {INPUT: batch}))
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        out = module(torch.from_numpy(batch))
    return [t.numpy() for t in (out if isinstance(out, tuple | list) else (out,))]


def _export(module: nn.Module, handle: EncoderHandle, output: str | os.PathLike, fmt: str, outputs: list[str],
            extra: dict[str, Any], batch: int, tolerance: float) -> dict[str, Any]:
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is not one of {'|'.join(FORMATS)}")
    path = Path(output).expanduser()
    device = next(module.parameters(), torch.empty(0)).device
    module = module.eval().cpu()  # traced on the CPU, so the file runs anywhere; moved back below
    try:
        size = handle.encoder.transform.image_size
        example = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        _write(module, example, path, fmt, outputs)
        check = torch.randn(batch + 1, 3, size, size, generator=torch.Generator().manual_seed(1))  # another size
        with torch.no_grad():
            expected = module(check)
    finally:
        module.to(device)
    expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
    got = run_exported(path, check.numpy())
    diff = max(float(np.abs(g - e).max() / max(1.0, float(np.abs(e).max()))) for g, e in zip(got, expected))
    if not diff <= tolerance:
        path.unlink(missing_ok=True)
        raise DataError(f"output={path}: the exported {fmt} file differs from PyTorch by {diff:.3g} (tolerance "
                        f"{tolerance:g}); the file was removed")
    record = {"format": fmt, "file": path.name, "preprocessing": _preprocessing(handle), "outputs": outputs,
              "encoder": {"name": handle.encoder.name, "spec": handle.spec, "random_init": handle.random_init},
              **extra, "parity": {"batch": batch + 1, "max_difference": diff, "tolerance": tolerance,
                                  "measure": "max |exported - pytorch| / max(1, max |pytorch|) over every output"}}
    write_text_atomic(path.with_name(path.name + ".json"), json.dumps(record, indent=2) + "\n")
    log.info("exported %s (max difference from PyTorch %.3g)", path, diff)
    return record


def export_encoder(encoder: str | EncoderHandle, output: str | os.PathLike, format: str = "onnx", batch: int = 2,
                   tolerance: float = 1e-4) -> dict[str, Any]:
    """Export an encoder alone (images -> ``embeddings``, not L2-normalised); returns the JSON written beside.

    Raises:
        ConfigError: an unknown format. DataError: the exported file disagrees with PyTorch beyond ``tolerance``.
    """
    handle = encoder if isinstance(encoder, EncoderHandle) else open_encoder(encoder, device="cpu")
    return _export(_Deployed(handle.encoder.backbone, None), handle, output, format, ["embeddings"],
                   {"embed_dim": handle.encoder.embed_dim}, batch, tolerance)


def export_classifier(classifier: str | os.PathLike | FewShotModel, output: str | os.PathLike, format: str = "onnx",
                      batch: int = 2, tolerance: float = 1e-4) -> dict[str, Any]:
    """Export a classifier (images -> ``probabilities``, ``similarity``); returns the JSON written beside, which
    also holds the classes in column order, the unknown threshold and the label of rejected pictures."""
    model = classifier if isinstance(classifier, FewShotModel) else load_classifier(classifier, device="cpu")
    extra = {"classes": model.classes, "threshold": model.threshold, "unknown": UNKNOWN,
             "rule": "predicted = classes[argmax(probabilities)] if similarity >= threshold else unknown",
             "method": model.method, "temperature": model.temperature}
    return _export(_Deployed(model.encoder.backbone, _Head(model), model.normalized), model.handle, output, format,
                   ["probabilities", "similarity"], extra, batch, tolerance)
