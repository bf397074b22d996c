"""Fine-tuning a classifier head on the support images of one episode, with augmentation (P>M>F style).

With five images per class, a head trained on augmented views of the support set adapts the embedding to the
new task; starting the head from the class prototypes means zero steps reproduce the nearest-centroid method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["finetune_head", "random_resized_crop_flip"]


def random_resized_crop_flip(images: torch.Tensor, area: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """Per-image random square crop (``area`` fraction of the image), resized back, and random horizontal flip.

    One ``grid_sample`` call for the whole batch, on any device; uses the global torch RNG.

    Args:
        images: (B, C, H, W) float images.
        area: range of the crop's area as a fraction of the image.
    """
    n = images.shape[0]
    options = {"device": images.device, "dtype": images.dtype}
    side = torch.empty(n, **options).uniform_(*area).sqrt()
    flip = torch.where(torch.rand(n, **options) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, **options)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, :, 2] = (torch.rand(n, 2, **options) * 2 - 1) * (1 - side).unsqueeze(-1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class _CosineHead(nn.Module):
    """``scale · cos(feature, class weight)``: the classifier P>M>F fine-tunes on DINO features."""

    def __init__(self, prototypes: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(prototypes, dim=-1).clone())
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T


def _linear_head(prototypes: torch.Tensor) -> nn.Linear:
    """A linear layer equal to ProtoNet's ``−‖x − p‖²`` up to a per-row constant: W = 2p, b = −‖p‖²."""
    head = nn.Linear(prototypes.shape[1], prototypes.shape[0]).to(prototypes)
    with torch.no_grad():
        head.weight.copy_(2 * prototypes)
        head.bias.copy_(-prototypes.square().sum(dim=-1))
    return head


def finetune_head(
    backbone: nn.Module,
    support_images: torch.Tensor,
    support_labels: torch.Tensor,
    query_images: torch.Tensor,
    steps: int = 50,
    lr: float = 1e-2,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = random_resized_crop_flip,
    head: str = "cosine",
    scale: float = 10.0,
    unfreeze: Sequence[str] = (),
    backbone_lr: float = 1e-4,
    seed: int = 0,
    batch_size: int = 256,
) -> torch.Tensor:
    """Train a head on augmented support images and score the query images.

    The head starts from the class prototypes of the un-augmented support features and is trained with Adam on
    cross-entropy over the full (augmented) support set each step. The backbone stays in eval mode (batch-norm
    statistics from five images would be noise). Parameters whose names start with a prefix in ``unfreeze`` are
    trained too, on a deep copy, so the caller's backbone is never modified.

    Args:
        backbone: maps (B, C, H, W) images to (B, D) features.
        support_images: (S, C, H, W) images.
        support_labels: (S,) int labels in ``[0, N)``, every class present.
        query_images: (Q, C, H, W) images.
        steps: optimisation steps; 0 returns the prototype classifier.
        lr: learning rate of the head.
        augment: batch augmentation applied to the support images at every step; ``None`` disables it.
        head: ``"cosine"`` (``scale · cos`` to learned class weights) or ``"linear"`` (ProtoNet-initialised).
        scale: logit scale of the cosine head.
        unfreeze: backbone parameter-name prefixes to fine-tune as well (e.g. ``("layer4",)``).
        backbone_lr: learning rate of the unfrozen backbone parameters.
        seed: seeds augmentation, so a call is reproducible; the global RNG state is left untouched.
        batch_size: images per backbone call when encoding the queries.

    Returns:
        (Q, N) query logits, on the backbone's device.
    """
    labels = support_labels.long().reshape(-1)
    n_way = int(labels.max()) + 1 if labels.numel() else 0
    if labels.numel() != support_images.shape[0]:
        raise ValueError(f"{support_images.shape[0]} support images but {labels.numel()} labels")
    if n_way < 2 or labels.min() < 0 or torch.bincount(labels, minlength=n_way).min() == 0:
        raise ValueError(f"support labels must cover 0…N-1 with N ≥ 2, got {sorted(set(labels.tolist()))}")
    if head not in ("cosine", "linear"):
        raise ValueError(f"head must be 'cosine' or 'linear', got {head!r}")
    was_training = backbone.training
    model = copy.deepcopy(backbone) if unfreeze else backbone
    trainable = _unfreeze(model, unfreeze) if unfreeze else []
    device = next(iter(model.parameters()), torch.empty(0)).device
    support, labels = support_images.to(device), labels.to(device)
    devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            with torch.no_grad():
                features = model(support)
            prototypes = (F.one_hot(labels, n_way).T.to(features) @ features) / torch.bincount(labels)[:, None]
            classifier = _CosineHead(prototypes, scale) if head == "cosine" else _linear_head(prototypes)
            groups = [{"params": list(classifier.parameters()), "lr": lr}]
            if trainable:
                groups.append({"params": trainable, "lr": backbone_lr})
            optimizer = torch.optim.Adam(groups)
            fixed = augment is None and not trainable                    # same features every step: encode once
            for _ in range(steps):
                if not fixed:
                    views = augment(support) if augment is not None else support
                    with torch.set_grad_enabled(bool(trainable)):
                        features = model(views)
                with torch.enable_grad():                                    # also inside a caller's no_grad
                    loss = F.cross_entropy(classifier(features), labels)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
            with torch.no_grad():
                return torch.cat([classifier(model(batch.to(device))) for batch in query_images.split(batch_size)])
    finally:
        backbone.train(was_training)


def _unfreeze(model: nn.Module, prefixes: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of ``model`` named with one of ``prefixes``; an unmatched prefix is an error, not a no-op."""
    named = dict(model.named_parameters())
    trainable = []
    for prefix in prefixes:
        matched = [p for name, p in named.items() if name == prefix or name.startswith(prefix + ".")]
        if not matched:
            raise ValueError(f"unfreeze prefix {prefix!r} matches no backbone parameter; parameters start with "
                             f"{sorted({name.split('.')[0] for name in named})}")
        trainable.extend(p for p in matched if all(p is not q for q in trainable))
    for p in named.values():
        p.requires_grad_(any(p is q for q in trainable))
    return trainable
