"""Building the model a loaded checkpoint describes, strict: its size is confirmed by the weights' own shapes on
the ``meta`` device before a byte of it is allocated."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from mmpretrain.hub.errors import CheckpointConfigError, HubError
from mmpretrain.hub.formats import LoadedCheckpoint, is_video, model_kwargs
from mmpretrain.hub.schema import on_meta, validate_config
from mmpretrain.models import build_video_model, create_backbone, state_fits


def refuse_misfit(skeleton: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str,
                  ignore: Callable[[str], bool] | None = None) -> None:
    """`CheckpointConfigError` naming ``source`` and the keys unless ``state`` fits ``skeleton`` (`state_fits`)."""
    problem = state_fits(skeleton, state, ignore)
    if problem:
        raise CheckpointConfigError(f"{source}: weights do not fit {what} as its config describes it: {problem}")


def backbone_factory(name: str, kwargs: Mapping | None) -> Callable[[], torch.nn.Module]:
    """The models factory's headless timm backbone for an architecture of a checkpoint (no timm download)."""
    options = model_kwargs(kwargs)
    drop_path = float(options.pop("drop_path_rate", 0.0))
    return lambda: create_backbone(name, drop_path, **options)


def build_backbone(loaded: LoadedCheckpoint, load: bool = True) -> torch.nn.Module:
    """Create the timm model of ``loaded.config`` (``num_classes=0``, no timm download) and load it strict.

    Strict loading is the point: a bare prefix strip with ``strict=False`` would leave e.g. Swin's downsample
    layers random without a word. Classifier weights the headless model lacks are the only keys skipped. The
    weights' shapes are checked against a ``meta``-device build first, so the real model is only allocated once
    they confirm its size; ``load=False`` stops after that check and returns the ``meta`` skeleton.

    Raises:
        HubError: missing or unexpected keys or shape mismatches, naming the keys and the source.
    """
    if is_video(loaded.config):
        raise HubError(f"{loaded.source} is a video–text model, not an image backbone: use mmpretrain.load_encoder")
    arch = validate_config(loaded.config, loaded.source)["architecture"]

    make = backbone_factory(arch["name"], arch.get("kwargs"))
    skeleton = on_meta(make)
    classifier = getattr(skeleton, "pretrained_cfg", {}).get("classifier")
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(f"{h}.") for h in heads)

    refuse_misfit(skeleton, loaded.state_dict, loaded.source, arch["name"], ignore=is_head)
    if not load:
        return skeleton
    model = make()
    expected = set(model.state_dict())
    state = {k: v for k, v in loaded.state_dict.items() if k in expected or not is_head(k)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise HubError(
            f"{loaded.source}: weights do not fit {arch['name']}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(f"{loaded.source}: weights do not fit {arch['name']}: {e}") from e
    return model.eval()


def build_model(loaded: LoadedCheckpoint, random_init: bool = False) -> torch.nn.Module:
    """The model a loaded checkpoint describes: an image backbone or a video–text fusion model, in eval mode.

    ``random_init=True`` builds the same architecture without loading the weights (seed first): the baseline every
    quality figure is compared with, built by the same code as the trained model so the two differ only in weights.

    Raises:
        HubError: the weights do not fit the architecture in the config, naming the source.
    """
    config = validate_config(loaded.config, loaded.source)
    arch = config["architecture"]
    if is_video(config):
        refuse_misfit(on_meta(lambda: build_video_model(arch)), loaded.state_dict, loaded.source, "the video model")
        model = build_video_model(arch)
        if not random_init:
            try:
                model.load_state_dict(loaded.state_dict, strict=True)
            except RuntimeError as err:
                raise HubError(f"{loaded.source}: weights do not fit the video model in its config: {err}") from err
        return model.eval()
    if random_init:
        build_backbone(loaded, load=False)  # the weights confirm the sizes before the real model is built
        return backbone_factory(arch["name"], arch.get("kwargs"))().eval()
    return build_backbone(loaded)
