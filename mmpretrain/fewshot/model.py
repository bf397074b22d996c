"""A few-shot classifier to keep: an encoder, a fitted classifier on its embeddings, calibrated probabilities and a
threshold for "none of these", in one folder that loads with nothing else.

Usage::

    from mmpretrain.fewshot import fit_classifier, load_classifier
    fit_classifier("photos/labelled", encoder="timm:resnet18", output="my_classifier")
    clf = load_classifier("my_classifier")
    result = clf.predict(["new.jpg"])           # paths, PIL images or uint8 HxWx3 arrays
    result.predicted[0], result.probabilities[0], result.top(3)[0]
    clf.predict_embeddings(embeddings)          # rows from clf.embed(images) or an embedding store

The folder (see docs/fewshot.md): ``classifier.json`` (method, classes and counts, calibration, encoder record,
estimate, versions), ``classifier.safetensors`` (support embeddings, their class indices, the CL2N base mean),
``encoder/`` (the embedded encoder: ``model.safetensors`` + ``config.json``) and ``README.md`` (the model card).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmpretrain import __version__
from mmpretrain._io import atomic_path, write_text_atomic
from mmpretrain.errors import ConfigError, DataError, MissingPathError, PathExistsError
from mmpretrain.fewshot.calibration import Calibration, calibrate, calibrate_held_out, leave_one_out
from mmpretrain.fewshot.classifier import FewShotClassifier
from mmpretrain.fewshot.encoding import EncoderHandle, open_encoder, read_encoder, write_encoder
from mmpretrain.fewshot.holdout import bootstrap_ci
from mmpretrain.fewshot.methods import METHODS, TRANSDUCTIVE
from mmpretrain.fewshot.sampling import encode_labels

if TYPE_CHECKING:
    from mmpretrain.encoders import ImageEncoder

__all__ = ["APP_METHODS", "UNKNOWN", "FewShotModel", "Predictions", "fit_classifier", "load_classifier"]

FORMAT = "mmpretrain.fewshot.classifier/1"
CONFIG_FILE = "classifier.json"
ARRAYS_FILE = "classifier.safetensors"
ENCODER_DIR = "encoder"
CARD_FILE = "README.md"
UNKNOWN = "unknown"
FINETUNE = "finetune"
APP_METHODS = tuple(sorted((set(METHODS) - TRANSDUCTIVE) | {FINETUNE}))
"""Methods a kept classifier can use: every inductive one (a picture's answer never depends on its batch), and
``finetune``, a cosine head trained on augmented views (:mod:`mmpretrain.fewshot.head`)."""
_HEAD_OPTIONS = ("steps", "lr", "scale")


@dataclass
class Predictions:
    """Calibrated predictions for a batch of pictures.

    Attributes:
        classes: the class names, in the column order of ``probabilities``.
        probabilities: (N, C) calibrated class probabilities (softmax of the logits over the temperature).
        similarity: (N,) cosine similarity to the nearest class prototype: what the unknown threshold compares.
        threshold: the unknown threshold (None: nothing is rejected).
        predicted: per picture, the most probable class, or ``"unknown"`` below the threshold.
    """

    classes: list[str]
    probabilities: np.ndarray
    similarity: np.ndarray
    threshold: float | None
    predicted: list[str] = field(init=False)

    def __post_init__(self) -> None:
        best = [self.classes[i] for i in self.probabilities.argmax(axis=1)] if len(self.probabilities) else []
        self.predicted = [UNKNOWN if not k else label for label, k in zip(best, self.known)]

    def __len__(self) -> int:
        return len(self.probabilities)

    @property
    def known(self) -> np.ndarray:
        """(N,) whether each picture is accepted as one of the classes."""
        if self.threshold is None:
            return np.ones(len(self.similarity), dtype=bool)
        return self.similarity >= self.threshold

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable ``(class, p)`` of each picture, most probable first."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(row[j])) for j in idx] for row, idx in zip(self.probabilities, order)]

    def records(self, ids: Sequence[str], paths: Sequence[str | None], k: int = 5) -> list[dict[str, Any]]:
        """One JSON-ready dict per picture: ``id``, ``path``, top-``k`` ``labels`` with ``p``, ``predicted``, and the
        ``similarity`` the threshold compared."""
        return [{"id": i, "path": p, "labels": [{"label": c, "p": round(v, 6)} for c, v in top],
                 "predicted": pred, "similarity": round(float(s), 6)}
                for i, p, top, pred, s in zip(ids, paths, self.top(k), self.predicted, self.similarity)]


class FewShotModel:
    """An encoder plus a calibrated few-shot classifier on its embeddings (see the module docstring).

    Build one with :func:`fit_classifier` or :meth:`fit`, keep it with :meth:`save`, open it with
    :func:`load_classifier`.

    Args:
        handle: the opened encoder.
        classifier: a fitted :class:`~mmpretrain.fewshot.FewShotClassifier` on that encoder's raw embeddings.
        calibration: temperature and unknown threshold.
        info: what the card and ``classifier.json`` record besides (support ``where``, ``estimate``, ...).
    """

    def __init__(self, handle: EncoderHandle, classifier: FewShotClassifier, calibration: Calibration,
                 info: dict[str, Any] | None = None, head: dict[str, Any] | None = None) -> None:
        self.handle = handle
        self.classifier = classifier
        self.calibration = calibration
        self.info = dict(info or {})
        self.head = head

    def __repr__(self) -> str:
        return (f"FewShotModel(method={self.method!r}, classes={len(self.classes)}, encoder={self.encoder.name!r}, "
                f"temperature={self.temperature:.4g}, threshold={self.threshold})")

    @property
    def encoder(self) -> ImageEncoder:
        """The :class:`~mmpretrain.encoders.ImageEncoder` pictures are embedded with."""
        return self.handle.encoder

    @property
    def method(self) -> str:
        return FINETUNE if self.head is not None else self.classifier.method

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.classifier.classes_]

    @property
    def temperature(self) -> float:
        return self.calibration.temperature

    @property
    def threshold(self) -> float | None:
        """Nearest-prototype cosine below which a picture is ``"unknown"``; assign a float (or None) to change it."""
        return self.calibration.threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self.calibration.threshold = None if value is None else float(value)
        self.calibration.threshold_source = "none" if value is None else "manual"

    @classmethod
    def fit(cls, handle: EncoderHandle, features: np.ndarray, labels: Sequence[str], method: str = "simpleshot",
            accept_rate: float = 0.95, threshold: float | None = None, base_mean: np.ndarray | None = None,
            info: dict[str, Any] | None = None, **method_kwargs: Any) -> FewShotModel:
        """Fit on embeddings (raw, as ``handle.encoder.encode_images(..., normalize=False)`` gives them).

        Args:
            features: (S, D) embeddings; for ``finetune``, (1 + V, S, D) views as
                :func:`~mmpretrain.fewshot.head.embed_views` gives them.
            method: one of :data:`APP_METHODS`.
            accept_rate / threshold: see :func:`~mmpretrain.fewshot.calibration.calibrate`.
            base_mean: CL2N center; default the mean of the support embeddings.

        Raises:
            ConfigError: an unknown or transductive method, options ``finetune`` does not take.
            DataError: fewer than 2 classes, or a class named ``unknown``.
        """
        if method not in APP_METHODS:
            why = " (transductive: an answer would depend on the other pictures of its batch)" \
                if method in TRANSDUCTIVE else ""
            raise ConfigError(f"method={method}{why}: choose one of {', '.join(APP_METHODS)}")
        labels = [str(label) for label in labels]
        if UNKNOWN in labels:
            raise DataError(f"a class is named {UNKNOWN!r}, which is what rejected pictures are called; rename it")
        classes, codes = encode_labels(labels)
        if len(classes) < 2:
            raise DataError(f"a classifier needs at least 2 classes, got {len(classes)} ({list(classes)})")
        views = np.asarray(features, dtype=np.float32)
        features = views[0] if method == FINETUNE else views
        if method == FINETUNE and (views.ndim != 3 or views.shape[0] < 2):
            raise ValueError(f"method={FINETUNE} needs (1 + views, S, D) embeddings (embed_views), got {views.shape}")
        center = features.mean(axis=0) if base_mean is None else np.asarray(base_mean, dtype=np.float32)
        if method == FINETUNE:
            classifier, calibration, correct, head = _fit_head(views, labels, codes, center, accept_rate, threshold,
                                                               method_kwargs)
        else:
            head = None
            classifier = FewShotClassifier(method, **method_kwargs).fit(features, labels, base_mean=center)
            calibration, correct = calibrate(features, codes, len(classes), method, base_mean=center,
                                             accept_rate=accept_rate, threshold=threshold, **method_kwargs)
        info = dict(info or {})
        if correct.size:
            low, high = bootstrap_ci(correct)
            info["estimate"] = {"accuracy": float(correct.mean() * 100), "ci95": [low, high], "rows": int(correct.size),
                                "protocol": "leave-one-out"}
        return cls(handle, classifier, calibration, info, head)

    # ---------------------------------------------------------------------------------------------- predict

    @property
    def normalized(self) -> bool:
        """Whether the classifier reads L2-normalised embeddings (fitted on a store of normalised rows)."""
        return bool(self.info.get("normalized"))

    def embed(self, images: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        """Embeddings of pictures (paths, PIL images or uint8 HxWx3 arrays) as the classifier reads them: raw, or
        L2-normalised when it was fitted on normalised rows (:attr:`normalized`)."""
        return self.encoder.encode_images(images, batch_size=batch_size, normalize=self.normalized)

    def predict_embeddings(self, embeddings: np.ndarray | torch.Tensor) -> Predictions:
        """Calibrated :class:`Predictions` for (N, D) embeddings of this classifier's encoder, as :meth:`embed` gives
        them (raw, or L2-normalised when :attr:`normalized`)."""
        if self.head is not None:
            from mmpretrain.fewshot.head import head_scores

            query = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
            scores = head_scores(self.head["weight"], self.head.get("scale", 10.0), query).numpy()
        else:
            scores = self.classifier.scores(embeddings)
        logits = torch.as_tensor(scores, dtype=torch.float64) / self.temperature
        probabilities = torch.softmax(logits, dim=-1).numpy().astype(np.float32)
        return Predictions(self.classes, probabilities, self.classifier.max_similarity(embeddings), self.threshold)

    def predict(self, images: Sequence[Any], batch_size: int = 64) -> Predictions:
        """Calibrated :class:`Predictions` for pictures: paths, PIL images or uint8 HxWx3 arrays."""
        return self.predict_embeddings(self.embed(images, batch_size))

    # ---------------------------------------------------------------------------------------------- save

    def config(self) -> dict[str, Any]:
        """What ``classifier.json`` holds."""
        counts = np.bincount(self.classifier.support_codes.numpy(), minlength=len(self.classes))
        return {
            "format": FORMAT,
            "method": self.method,
            "method_kwargs": {k: v for k, v in (self.head or {}).items() if k != "weight"} if self.head is not None
            else self.classifier.method_kwargs,
            "classes": self.classes,
            "counts": {c: int(n) for c, n in zip(self.classes, counts)},
            "embed_dim": int(self.classifier.support_features.shape[1]),
            "normalized": self.normalized,
            "unknown": UNKNOWN,
            "calibration": self.calibration.to_dict(),
            "encoder": self.info.get("encoder", {"spec": self.handle.spec, "name": self.encoder.name}),
            "support": self.info.get("support"),
            "estimate": self.info.get("estimate"),
            "package": {"name": "mmpretrain-ssl", "version": __version__},
            "created": self.info.get("created") or datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
        }

    def save(self, folder: str | os.PathLike, embed_encoder: bool = True) -> Path:
        """Write the classifier folder (see the module docstring); an earlier classifier there is replaced whole.

        Args:
            embed_encoder: copy the encoder's weights into ``encoder/``; ``False`` records its spec and the sha256
                of its weights, and loading opens (and checks) that spec again.

        Raises:
            PathExistsError: ``folder`` holds something other than a classifier.
        """
        folder = Path(folder).expanduser()
        if folder.is_file() or (folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file()):
            raise PathExistsError(f"output={folder}: exists and is not a classifier folder (no {CONFIG_FILE}); "
                                  "choose a new folder")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            if embed_encoder:
                self.info["encoder"] = write_encoder(self.handle, staging / ENCODER_DIR)
            else:
                self.info["encoder"] = {"embedded": False, "spec": self.handle.spec, "name": self.encoder.name,
                                        "random_init": self.handle.random_init,
                                        "weights_sha256": self.handle.weights_sha256}
            clf = self.classifier
            arrays = {"support": clf.support_features.contiguous(), "codes": clf.support_codes.contiguous(),
                      "base_mean": clf.base_mean.contiguous()}
            if self.head is not None:
                arrays["head_weight"] = self.head["weight"].contiguous()
            with atomic_path(staging / ARRAYS_FILE) as tmp:
                save_file(arrays, str(tmp))
            config = self.config()
            write_text_atomic(staging / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
            write_text_atomic(staging / CARD_FILE, model_card(config))
            if folder.exists():
                old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
                os.replace(folder, old)
                os.replace(staging, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


def _fit_head(views: np.ndarray, labels: list[str], codes: np.ndarray, center: np.ndarray, accept_rate: float,
              threshold: float | None, options: dict[str, Any],
              ) -> tuple[FewShotClassifier, Calibration, np.ndarray, dict[str, Any]]:
    """``finetune``: the head trained on every view, calibrated by retraining it without each picture's views.

    A cosine nearest-centroid classifier on the un-augmented views keeps the support embeddings, so the unknown
    threshold (nearest-prototype similarity) means what it means for every other method.
    """
    unknown = sorted(set(options) - set(_HEAD_OPTIONS))
    if unknown:
        raise ConfigError(f"method={FINETUNE} takes {', '.join(_HEAD_OPTIONS)}, not {', '.join(unknown)}")
    from mmpretrain.fewshot.head import held_out_head_scores, train_head

    n_classes = int(codes.max()) + 1
    classifier = FewShotClassifier("protonet_cosine").fit(views[0], labels, base_mean=center)
    _, similarity, usable = leave_one_out(views[0], codes, n_classes, "protonet_cosine", center)
    tensor, targets = torch.from_numpy(views), torch.from_numpy(codes)
    scores = held_out_head_scores(tensor, targets, n_classes, **options)
    calibration, correct = calibrate_held_out(scores, similarity, usable, codes, accept_rate, threshold)
    head = {"weight": train_head(tensor, targets, n_classes, **options), "views": views.shape[0] - 1, **options}
    return classifier, calibration, correct, head


def load_classifier(folder: str | os.PathLike, device: str | torch.device | None = None) -> FewShotModel:
    """Open a classifier folder written by :func:`fit_classifier` / :meth:`FewShotModel.save`.

    Raises:
        MissingPathError: no such folder or a missing file. DataError: not a classifier folder, a damaged file, or
            a referenced encoder whose weights changed.
    """
    folder = Path(folder).expanduser()
    for name in (CONFIG_FILE, ARRAYS_FILE):
        if not (folder / name).is_file():
            raise MissingPathError(f"classifier={folder}: no {name} (not a classifier folder written by "
                                   "mmpretrain-fewshot fit)")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{folder / CONFIG_FILE}: not valid JSON: {err}") from err
    if config.get("format") != FORMAT:
        raise DataError(f"{folder / CONFIG_FILE}: format {config.get('format')!r} is not {FORMAT!r}")
    try:
        arrays = load_file(str(folder / ARRAYS_FILE))
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise DataError(f"{folder / ARRAYS_FILE}: not a readable safetensors file: {err}") from err
    handle = read_encoder(config["encoder"], folder / ENCODER_DIR, device=device)
    if handle.encoder.embed_dim != arrays["support"].shape[1]:
        raise DataError(f"classifier={folder}: the encoder gives {handle.encoder.embed_dim}-d embeddings, the "
                        f"classifier holds {arrays['support'].shape[1]}-d ones")
    labels = np.asarray(config["classes"])[arrays["codes"].numpy()]
    head = None
    if config["method"] == FINETUNE:
        if "head_weight" not in arrays:
            raise DataError(f"{folder / ARRAYS_FILE}: a {FINETUNE} classifier without head_weight")
        head = {**config["method_kwargs"], "weight": arrays["head_weight"]}
        classifier = FewShotClassifier("protonet_cosine")
    else:
        classifier = FewShotClassifier(config["method"], **config["method_kwargs"])
    classifier.fit(arrays["support"], labels, base_mean=arrays["base_mean"])
    calibration = Calibration(**config["calibration"])
    info = {key: config.get(key) for key in ("encoder", "support", "estimate", "created", "normalized")}
    return FewShotModel(handle, classifier, calibration, info, head)


def model_card(config: dict[str, Any]) -> str:
    """The classifier's README: what it was made from, how good it is expected to be, how to call it."""
    cal, enc, est = config["calibration"], config["encoder"], config.get("estimate") or {}
    kept = "embedded in encoder/" if enc.get("embedded") else f"referenced, weights sha256 {enc.get('weights_sha256')}"
    lines = [f"# Few-shot classifier: {len(config['classes'])} classes", "",
             f"- encoder: {enc.get('name')} (`{enc.get('spec')}`, {kept})"
             + (" — random init, not pretrained" if enc.get("random_init") else ""),
             f"- method: {config['method']} {config['method_kwargs'] or ''}".rstrip(),
             f"- support: {(config.get('support') or {}).get('where', '-')}",
             f"- calibration: temperature {cal['temperature']:.4g} (leave-one-out on {cal['rows']} pictures); unknown "
             f"threshold {cal['threshold'] if cal['threshold'] is None else round(cal['threshold'], 4)} "
             f"({cal['threshold_source']}, accept rate {cal['accept_rate']})"]
    if est.get("accuracy") is not None:
        lines.append(f"- estimated accuracy on these classes: {est['accuracy']:.1f} % (95% CI {est['ci95'][0]:.1f}–"
                     f"{est['ci95'][1]:.1f}, {est['protocol']} over {est['rows']} pictures)")
    lines += [f"- made with mmpretrain-ssl {config['package']['version']} on {config['created']}", "",
              "| class | pictures |", "|---|---:|", *[f"| {c} | {n} |" for c, n in config["counts"].items()], "",
              "Use it:", "", "```bash", "mmpretrain-fewshot predict classifier=<this folder> input=<pictures> "
              "output=preds.jsonl", "```", "", "```python", "from mmpretrain.fewshot import load_classifier",
              "clf = load_classifier('<this folder>')", "clf.predict(['picture.jpg']).predicted", "```", ""]
    return "\n".join(lines)


def fit_classifier(support: Any, encoder: str | EncoderHandle | None = None, output: str | os.PathLike | None = None,
                   method: str = "simpleshot", accept_rate: float = 0.95, threshold: float | None = None,
                   embed_encoder: bool = True, batch_size: int = 64, device: str | None = None, views: int = 8,
                   **method_kwargs: Any) -> FewShotModel:
    """Fit a classifier on a labelled support set, and write its folder when ``output`` is given.

    Args:
        support: a labelled folder, file list, manifest, shards or embedding store (see
            :mod:`mmpretrain.fewshot.sources`).
        encoder: an encoder spec (see :mod:`mmpretrain.fewshot.encoding`) or an opened handle; for a store,
            default the encoder named in its manifest.
        method / accept_rate / threshold / method_kwargs: see :meth:`FewShotModel.fit`.
        embed_encoder: see :meth:`FewShotModel.save`.
        views: ``finetune`` only: augmented views of each support picture the head trains on.
    """
    from mmpretrain.fewshot.sources import is_store, labeled_support

    if encoder is None:
        if not is_store(support):
            raise ConfigError("fit needs encoder=<checkpoint, timm:<model> or pixels> for a support set of images")
        from mmpretrain.embeddings import open_store

        encoder = open_store(support, verify="none").encoder
    handle = encoder if isinstance(encoder, EncoderHandle) else open_encoder(encoder, device=device)
    data = labeled_support(support, handle.encoder, batch_size=batch_size)
    features = data.features
    if method == FINETUNE:
        if any(p is None for p in data.paths) or is_store(support):
            raise ConfigError(f"method={FINETUNE} trains on augmented pictures: support= must be a folder, file list "
                              f"or manifest of picture files, not {data.where}")
        from mmpretrain.fewshot.head import embed_views

        features = embed_views(handle.encoder, data.paths, views=views, batch_size=batch_size)
    model = FewShotModel.fit(handle, features, data.labels, method, accept_rate, threshold,
                             info={"support": {"where": data.where, "rows": len(data.labels), "paths": data.paths},
                                   "normalized": data.normalized}, **method_kwargs)
    if output is not None:
        model.save(output, embed_encoder=embed_encoder)
    return model

