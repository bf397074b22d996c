"""AdamW parameter groups of the video model: one learning rate per part, no weight decay on norms, biases and
embeddings.

A pretrained text encoder and a MoBY-initialised frame encoder are already good; the fusion transformer and heads
start from scratch. One learning rate for all lets the new parts' large early gradients (MTM's above all) rewrite
the pretrained ones, so each part gets its own multiplier of the base rate (``model.lr_mult``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from mmpretrain.errors import ConfigError
from mmpretrain.training import param_groups_weight_decay

LR_PARTS = ("text", "frames", "fusion")
# 2-D embedding tables (BERT's word/position/type embeddings, the fusion's type embedding) and the learned
# position/temperature parameters are not weights to shrink
VIDEO_NO_DECAY = ("embeddings.", "type_embed", "temporal_pos", "spatial_pos", "temperature", "time_embed")


def part_of(name: str, fresh: tuple[str, ...] = ()) -> str:
    """Which ``model.lr_mult`` part a :class:`VideoTextFusion` parameter belongs to; names starting with one of
    ``fresh`` (weights of a pretrained part that start at random init) learn with the new parts, as ``fusion``."""
    if fresh and name.startswith(fresh):
        return "fusion"
    if name.startswith("text_encoder."):
        return "text"
    if name.startswith(("frame_encoder.", "temporal_stem.", "temporal_attn.")):
        return "frames"
    return "fusion"


def video_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    lr_mult: Mapping[str, float] | None = None,
    extra_no_decay: Iterable[str] = (),
    fresh: Iterable[str] = (),
) -> list[dict]:
    """Param groups ``{"name": "<part>" or "<part>/no_decay", "params", "lr", "weight_decay"}`` of a
    :class:`VideoTextFusion`: lr = ``lr * lr_mult[part]`` (1 when unset); empty groups are left out. ``fresh``:
    parameter-name prefixes that learn as ``fusion`` (e.g. word embeddings re-initialised for a trained vocabulary).

    Raises:
        ValueError: an unknown part or a negative multiplier, naming ``model.lr_mult``.
    """
    mult = dict(lr_mult or {})
    unknown = sorted(set(mult) - set(LR_PARTS))
    if unknown:
        raise ConfigError(f"model.lr_mult has unknown parts {unknown}; known: {LR_PARTS}")
    bad = {k: v for k, v in mult.items() if float(v) < 0}
    if bad:
        raise ConfigError(f"model.lr_mult must be >= 0, got {bad}")
    names = {id(p): n for n, p in model.named_parameters()}
    fresh = tuple(fresh)
    groups = []
    decayed, exempt = param_groups_weight_decay([model], weight_decay, (*VIDEO_NO_DECAY, *extra_no_decay))
    for base in (decayed, exempt):
        suffix = "" if base is decayed else "/no_decay"
        for part in LR_PARTS:
            params = [p for p in base["params"] if part_of(names[id(p)], fresh) == part]
            if params:
                groups.append({"name": part + suffix, "params": params, "lr": lr * float(mult.get(part, 1.0)),
                               "weight_decay": base["weight_decay"]})
    return groups
