"""Support-set fine-tuning with a tiny conv backbone on synthetic images that a colour tells apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmpretrain.fewshot import finetune_head, random_resized_crop_flip


def tiny_backbone() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def images(per_class: int, seed: int, square: int = 8, nuisance: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes: a red, green or blue square on a noisy grey background, at a random place.

    ``nuisance`` adds a random colour cast per image, which a random conv net confuses with the class colour.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per_class)
    batch = 0.5 + 0.1 * torch.randn(len(labels), 3, 16, 16, generator=generator)
    batch += nuisance * torch.randn(len(labels), 3, 1, 1, generator=generator)
    for i, label in enumerate(labels.tolist()):
        y, x = torch.randint(0, 17 - square, (2,), generator=generator).tolist()
        batch[i, label, y:y + square, x:x + square] += 1.0
    return batch, labels


@pytest.fixture(scope="module")
def task() -> dict[str, torch.Tensor]:
    support, support_labels = images(2, seed=1)
    query, query_labels = images(6, seed=2)
    return {"support": support, "support_labels": support_labels, "query": query, "query_labels": query_labels}


def test_zero_steps_is_the_cosine_prototype_classifier(task):
    backbone = tiny_backbone().eval()
    logits = finetune_head(backbone, task["support"], task["support_labels"], task["query"], steps=0, scale=5.0)
    with torch.no_grad():
        support = backbone(task["support"]).double().numpy()
        query = backbone(task["query"]).double().numpy()
    labels = task["support_labels"].numpy()
    expected = np.zeros((len(query), 3))
    for c in range(3):
        mean = support[labels == c].mean(axis=0)
        for i, q in enumerate(query):
            expected[i, c] = 5.0 * q @ mean / np.linalg.norm(q) / np.linalg.norm(mean)
    np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("head", ["cosine", "linear"])
def test_fine_tuned_head_classifies_queries(task, head):
    logits = finetune_head(tiny_backbone(), task["support"], task["support_labels"], task["query"], steps=30,
                           lr=0.05, head=head)
    assert logits.shape == (18, 3)
    assert (logits.argmax(dim=1) == task["query_labels"]).float().mean() == 1.0


def test_fine_tuning_beats_the_prototypes_and_unfreezing_beats_frozen():
    support, support_labels = images(5, seed=1, square=4, nuisance=0.1)
    query, query_labels = images(30, seed=101, square=4, nuisance=0.1)

    def accuracy(**kwargs) -> float:
        logits = finetune_head(tiny_backbone(), support, support_labels, query, lr=0.05, **kwargs)
        return (logits.argmax(dim=1) == query_labels).float().mean().item()

    prototypes, frozen = accuracy(steps=0), accuracy(steps=50)
    unfrozen = accuracy(steps=100, unfreeze=("0",), backbone_lr=0.02)
    assert frozen > prototypes + 0.1 and unfrozen > frozen + 0.1, (prototypes, frozen, unfrozen)


def test_backbone_and_global_rng_are_left_alone(task):
    backbone = tiny_backbone().train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng_state = torch.get_rng_state()
    first = finetune_head(backbone, task["support"], task["support_labels"], task["query"], steps=5,
                          unfreeze=("0",), backbone_lr=0.1, seed=3)
    frozen = finetune_head(backbone, task["support"], task["support_labels"], task["query"], steps=5, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert backbone.training and all(p.requires_grad for p in backbone.parameters())
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    again = finetune_head(backbone, task["support"], task["support_labels"], task["query"], steps=5,
                          unfreeze=("0",), backbone_lr=0.1, seed=3)
    torch.testing.assert_close(first, again)                                   # seeded: reproducible
    assert not torch.allclose(first, frozen)                                   # the unfrozen conv did train
    with torch.no_grad():                                                      # e.g. inside an evaluation loop
        inside = finetune_head(backbone, task["support"], task["support_labels"], task["query"], steps=5, seed=3)
    torch.testing.assert_close(inside, frozen)


def test_bad_arguments(task):
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="prefix 'layer4' matches no backbone parameter"):
        finetune_head(backbone, task["support"], task["support_labels"], task["query"], unfreeze=("layer4",))
    with pytest.raises(ValueError, match="support labels must cover"):
        finetune_head(backbone, task["support"], task["support_labels"] * 2, task["query"])
    with pytest.raises(ValueError, match="6 support images but 5 labels"):
        finetune_head(backbone, task["support"], task["support_labels"][:5], task["query"])
    with pytest.raises(ValueError, match="head must be"):
        finetune_head(backbone, task["support"], task["support_labels"], task["query"], head="mlp")


def test_augmentation_crops_and_flips_per_image():
    batch = torch.rand(64, 3, 8, 8)
    whole = random_resized_crop_flip(batch, area=(1.0, 1.0))                 # no crop: identity or mirror only
    flipped = torch.isclose(whole, batch.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(whole, batch, atol=1e-5).flatten(1).all(1)
    assert torch.all(flipped | same) and 0 < flipped.sum() < 64
    cropped = random_resized_crop_flip(batch, area=(0.3, 0.6))
    assert cropped.shape == batch.shape and not torch.allclose(cropped, batch)
