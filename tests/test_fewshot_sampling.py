"""Episode sampler and class split: structure, randomness, determinism and the errors users meet."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mmpretrain.fewshot import sample_episodes, split_classes


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """12 string classes of unequal sizes (20 to 42 rows), shuffled."""
    rng = np.random.default_rng(3)
    labels = np.concatenate([[f"class{c:02d}"] * (20 + 2 * c) for c in range(12)])
    return labels[rng.permutation(len(labels))]


def test_episode_structure(labels):
    n_way, n_shot, n_query, episodes = 5, 3, 4, 200
    sampled = sample_episodes(labels, n_way, n_shot, n_query, episodes, seed=1)
    assert sampled.support.shape == (episodes, n_way * n_shot)
    assert sampled.query.shape == (episodes, n_way * n_query)
    assert sampled.classes.shape == (episodes, n_way)
    assert len(sampled) == episodes
    for e in range(episodes):
        support, query = sampled.support[e].numpy(), sampled.query[e].numpy()
        assert len(set(support) | set(query)) == len(support) + len(query)             # disjoint, no repeats
        classes = sampled.class_names[sampled.classes[e].numpy()]
        assert len(set(classes)) == n_way                                             # distinct ways
        np.testing.assert_array_equal(labels[support], np.repeat(classes, n_shot))    # K per way, class-major
        np.testing.assert_array_equal(labels[query], np.repeat(classes, n_query))     # Q per way
    np.testing.assert_array_equal(sampled.support_labels[0], np.repeat(np.arange(n_way), n_shot))
    np.testing.assert_array_equal(sampled.query_labels[7], np.repeat(np.arange(n_way), n_query))


def test_same_seed_same_episodes_other_seed_differs(labels):
    a, b, c = (sample_episodes(labels, 5, 1, 5, 50, seed=s) for s in (0, 0, 1))
    for name in ("support", "query", "classes"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.support, c.support)
    assert not torch.equal(a.classes, c.classes)


def test_draws_are_uniform():
    """Every row of a class is equally likely to be a support example, and every class to be a way."""
    labels = np.repeat(np.arange(4), 4)                                                # 4 classes × 4 rows
    sampled = sample_episodes(labels, n_way=2, n_shot=1, n_query=2, episodes=8000, seed=5)
    support_freq = np.bincount(sampled.support.numpy().ravel(), minlength=16) / (8000 * 2)
    np.testing.assert_allclose(support_freq, 1 / 16, atol=0.01)                       # σ ≈ 0.002
    class_freq = np.bincount(sampled.classes.numpy().ravel(), minlength=4) / (8000 * 2)
    np.testing.assert_allclose(class_freq, 1 / 4, atol=0.02)
    first_way = np.bincount(sampled.classes[:, 0].numpy(), minlength=4) / 8000
    np.testing.assert_allclose(first_way, 1 / 4, atol=0.03)


def test_short_classes_are_left_out_with_a_warning(caplog):
    labels = np.array(["big"] * 10 + ["mid"] * 10 + ["tiny"] * 3 + ["other"] * 10)
    with caplog.at_level(logging.WARNING, logger="mmpretrain.fewshot.sampling"):
        sampled = sample_episodes(labels, n_way=3, n_shot=2, n_query=3, episodes=100)
    assert "'tiny': 3" in caplog.text and "fewer than 5" in caplog.text
    rows = np.concatenate([sampled.support.numpy().ravel(), sampled.query.numpy().ravel()])
    assert "tiny" not in set(labels[rows])


def test_too_few_classes_is_an_error():
    with pytest.raises(ValueError, match=r"5-way episodes need at least 5 classes, but the labels hold only 3"):
        sample_episodes(["a", "b", "c"] * 30, n_way=5)


def test_too_few_large_enough_classes_names_them():
    labels = ["a"] * 30 + ["b"] * 30 + ["c"] * 7 + ["d"] * 4
    with pytest.raises(ValueError, match=r"need 3 classes with at least 16 examples.*only 2 of 4 classes.*"
                                         r"'c': 7, 'd': 4"):
        sample_episodes(labels, n_way=3, n_shot=1, n_query=15)


@pytest.mark.parametrize("field", ["n_way", "n_shot", "n_query", "episodes"])
def test_sizes_must_be_positive(labels, field):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        sample_episodes(labels, **{field: 0})


def test_split_classes_is_class_disjoint_and_seeded(labels):
    base, novel = split_classes(labels, n_base=4, seed=2)
    assert base.dtype == bool and not np.any(base & novel) and np.all(base | novel)
    assert len(set(labels[base])) == 4 and len(set(labels[novel])) == 8
    assert not set(labels[base]) & set(labels[novel])
    again, _ = split_classes(labels, n_base=4, seed=2)
    np.testing.assert_array_equal(base, again)
    assert {frozenset(labels[split_classes(labels, 4, seed=s)[0]]) for s in range(5)} != {frozenset(labels[base])}
    with pytest.raises(ValueError, match="n_base must be between 1 and 11"):
        split_classes(labels, n_base=12)
