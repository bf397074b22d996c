"""Parameter groups for AdamW: which weights get weight decay."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

NO_DECAY_KEYWORDS: tuple[str, ...] = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed", "cls_token")


def param_groups_weight_decay(
    modules: Iterable[nn.Module], weight_decay: float, extra_no_decay: Iterable[str] = ()
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    No decay on 1-D parameters (norm weights and biases), on names a timm model lists in `no_weight_decay()`,
    and on relative-position bias tables and position embeddings. The official MoBY code decays the Swin
    relative-position tables; Swin's supervised recipe does not, and neither do we.
    """
    keywords = NO_DECAY_KEYWORDS + tuple(extra_no_decay)
    decay, no_decay = [], []
    for module in modules:
        skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            exempt = param.ndim <= 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords)
            (no_decay if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw_kernel(precision: str | int) -> dict[str, bool]:
    """``fused=True`` (the fastest AdamW) unless Lightning's mixed precision (AMP) plugin runs the step.

    The AMP plugin (``16-mixed`` and ``bf16-mixed``) refuses to clip gradients of an optimizer that unscales them
    internally, which a fused one does; ``foreach`` is the fastest kernel it accepts.
    """
    return {"foreach": True} if "mixed" in str(precision) else {"fused": True}
