"""Episodic evaluation: the CI formula, agreement with a per-episode loop, and sanity on easy and impossible data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mmpretrain.fewshot import METHODS, EpisodeResult, confidence_interval, evaluate_episodes, sample_episodes


def clustered(classes: int = 12, per_class: int = 25, dim: int = 16, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels


def test_confidence_interval_formula():
    accuracies = np.array([20.0, 60.0, 80.0, 100.0, 40.0])
    expected = 1.96 * np.sqrt(np.mean((accuracies - accuracies.mean()) ** 2)) / np.sqrt(5)   # population σ
    assert confidence_interval(accuracies) == pytest.approx(expected)
    assert confidence_interval(accuracies, z=2.576) == pytest.approx(expected / 1.96 * 2.576)
    result = EpisodeResult("protonet", 5, 1, 15, accuracies)
    assert result.ci95 == pytest.approx(expected)
    assert result.mean == pytest.approx(60.0) and result.episodes == 5
    assert result.to_dict()["ci95"] == pytest.approx(expected)
    assert "60.00 ± " in str(result)
    with pytest.raises(ValueError, match="at least one episode"):
        confidence_interval([])


def test_matches_a_per_episode_numpy_loop():
    """The batched evaluator scores exactly the sampler's episodes, whatever the chunking."""
    features, labels = clustered(spread=1.5)
    result = evaluate_episodes(features, labels, n_way=4, n_shot=2, n_query=3, episodes=60, method="protonet",
                               seed=3, chunk_size=7, device="cpu")
    sampled = sample_episodes(labels, 4, 2, 3, 60, seed=3)
    expected = []
    for e in range(60):
        support = features[sampled.support[e].numpy()].reshape(4, 2, -1).astype(np.float64)
        query = features[sampled.query[e].numpy()].astype(np.float64)
        centroids = support.mean(axis=1)
        predicted = [np.argmin([np.sum((q - c) ** 2) for c in centroids]) for q in query]
        expected.append(100 * np.mean(np.array(predicted) == np.repeat(np.arange(4), 3)))
    np.testing.assert_allclose(result.accuracies, expected)
    again = evaluate_episodes(features, labels, 4, 2, 3, 60, "protonet", seed=3, device="cpu")
    np.testing.assert_array_equal(again.accuracies, result.accuracies)
    assert (result.method, result.n_way, result.n_shot, result.n_query) == ("protonet", 4, 2, 3)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_separable_data_is_solved(method):
    features, labels = clustered()
    result = evaluate_episodes(features, labels, n_way=5, n_shot=1, n_query=5, episodes=100, method=method,
                               device="cpu")
    assert result.mean > 99


@pytest.mark.parametrize("method", sorted(METHODS))
def test_shuffled_labels_give_chance(method):
    features, labels = clustered(classes=10, per_class=40)
    shuffled = np.random.default_rng(1).permutation(labels)
    result = evaluate_episodes(features, shuffled, n_way=5, n_shot=5, n_query=10, episodes=300, method=method,
                               device="cpu")
    assert abs(result.mean - 20) < 4 * result.ci95 + 1, (result.mean, result.ci95)


def test_several_shot_counts_in_one_call():
    features, labels = clustered()
    results = evaluate_episodes(features, labels, n_shot=[1, 5, 1], n_query=5, episodes=20, method="knn", k=1)
    assert list(results) == [1, 5]
    assert all(isinstance(r, EpisodeResult) and r.n_shot == k for k, r in results.items())


def test_simpleshot_uses_the_base_class_mean(caplog):
    features, labels = clustered(seed=2)
    base = np.random.default_rng(4).normal(size=(50, 16)).astype(np.float32) + 3.0
    with_base = evaluate_episodes(features, labels, episodes=30, n_query=5, base_features=base, device="cpu")
    explicit = evaluate_episodes(features, labels, episodes=30, n_query=5, device="cpu",
                                 base_mean=torch.from_numpy(base).double().mean(0).float())
    np.testing.assert_array_equal(with_base.accuracies, explicit.accuracies)
    with caplog.at_level(logging.WARNING, logger="mmpretrain.fewshot.evaluate"):
        evaluate_episodes(features, labels, episodes=5, n_query=5, device="cpu")
    assert "no base_features: centering each episode on its support mean" in caplog.text
    with pytest.raises(ValueError, match="base_features have dimension 3 but features have 16"):
        evaluate_episodes(features, labels, episodes=5, n_query=5, base_features=np.zeros((4, 3)))


def test_custom_callable_method():
    features, labels = clustered()

    def always_first(support, support_labels, query, n_way):
        scores = torch.zeros(*query.shape[:2], n_way, device=query.device)
        scores[..., 0] = 1.0
        return scores

    result = evaluate_episodes(features, labels, n_way=4, n_query=5, episodes=10, method=always_first)
    assert result.method == "always_first"
    np.testing.assert_allclose(result.accuracies, 25.0)


def test_bad_inputs_are_named():
    features, labels = clustered()
    with pytest.raises(ValueError, match="features has 300 rows but labels has 299"):
        evaluate_episodes(features, labels[:-1])
    with pytest.raises(ValueError, match=r"'knn' has no option 'kk'; its options: k, metric"):
        evaluate_episodes(features, labels, method="knn", kk=3)
    with pytest.raises(ValueError, match="unknown few-shot method 'protonett'"):
        evaluate_episodes(features, labels, method="protonett")
    with pytest.raises(ValueError, match=r"must be a \(rows, dim\) matrix"):
        evaluate_episodes(features[0], labels)
    with pytest.raises(ValueError, match="need 5 classes with at least 31 examples"):
        evaluate_episodes(features, labels, n_shot=1, n_query=30)
