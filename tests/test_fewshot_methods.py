"""Every few-shot method against an independent NumPy computation, one episode at a time with plain loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpretrain.fewshot import METHODS, get_method
from mmpretrain.fewshot.methods import (
    bd_cspn,
    knn,
    logreg,
    protonet,
    protonet_cosine,
    simpleshot,
    simpleshot_l2n,
    soft_kmeans,
)

E, N, K, Q, D = 3, 3, 2, 4, 6


@pytest.fixture(scope="module")
def episode() -> dict[str, np.ndarray]:
    """Small fixed episodes; support labels deliberately unordered and unbalanced-looking per position."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(E, N, D)) * 2
    support_labels = np.stack([rng.permutation(np.repeat(np.arange(N), K)) for _ in range(E)])
    query_labels = np.tile(np.repeat(np.arange(N), Q), (E, 1))
    support = np.stack([centres[e][support_labels[e]] for e in range(E)]) + rng.normal(size=(E, N * K, D))
    query = np.stack([centres[e][query_labels[e]] for e in range(E)]) + rng.normal(size=(E, N * Q, D))
    return {"support": support.astype(np.float32), "labels": support_labels, "query": query.astype(np.float32),
            "base_mean": rng.normal(size=D).astype(np.float32)}


def run(method, ep: dict[str, np.ndarray], **kwargs) -> np.ndarray:
    scores = method(torch.from_numpy(ep["support"]), torch.from_numpy(ep["labels"]), torch.from_numpy(ep["query"]),
                    N, **kwargs)
    assert scores.shape == (E, N * Q, N)
    return scores.double().numpy()


def ref_means(support: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([support[labels == c].astype(np.float64).mean(axis=0) for c in range(N)])


def ref_nearest_centroid(support: np.ndarray, labels: np.ndarray, query: np.ndarray) -> np.ndarray:
    """ProtoNet's documented scores: ‖q‖² − ‖q − p‖² (negative squared distance plus a per-query constant)."""
    means = ref_means(support, labels)
    out = np.zeros((len(query), N))
    for q in range(len(query)):
        for c in range(N):
            out[q, c] = np.sum(query[q] ** 2) - np.sum((query[q] - means[c]) ** 2)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def per_episode(ep: dict[str, np.ndarray], fn) -> np.ndarray:
    return np.stack([fn(ep["support"][e].astype(np.float64), ep["labels"][e], ep["query"][e].astype(np.float64))
                     for e in range(E)])


def test_protonet_matches_numpy(episode):
    np.testing.assert_allclose(run(protonet, episode), per_episode(episode, ref_nearest_centroid), rtol=1e-5,
                               atol=1e-3)


def test_protonet_cosine_matches_numpy(episode):
    def ref(s, y, q):
        means = ref_means(s, y)
        return np.array([[7.0 * q[i] @ means[c] / np.linalg.norm(q[i]) / np.linalg.norm(means[c]) for c in range(N)]
                         for i in range(len(q))])

    np.testing.assert_allclose(run(protonet_cosine, episode, scale=7.0), per_episode(episode, ref), atol=1e-5)


def test_simpleshot_cl2n_matches_numpy(episode):
    base = episode["base_mean"].astype(np.float64)

    def ref(s, y, q):
        return ref_nearest_centroid(unit(s - base), y, unit(q - base))

    got = run(simpleshot, episode, base_mean=torch.from_numpy(episode["base_mean"]))
    np.testing.assert_allclose(got, per_episode(episode, ref), atol=1e-5)


def test_simpleshot_without_base_mean_centers_on_the_support_mean(episode):
    def ref(s, y, q):
        centre = s.mean(axis=0)
        return ref_nearest_centroid(unit(s - centre), y, unit(q - centre))

    np.testing.assert_allclose(run(simpleshot, episode), per_episode(episode, ref), atol=1e-5)


def test_simpleshot_l2n_matches_numpy(episode):
    def ref(s, y, q):
        return ref_nearest_centroid(unit(s), y, unit(q))

    np.testing.assert_allclose(run(simpleshot_l2n, episode), per_episode(episode, ref), atol=1e-5)


def test_logreg_reaches_the_numpy_optimum(episode):
    l2 = 0.05

    def ref(s, y, q):
        """Newton's method on the same objective (weights and bias penalised), a different algorithm to the end."""
        x = np.hstack([unit(s), np.ones((len(s), 1))])                     # bias as a constant feature
        theta = np.zeros((D + 1) * N)
        for _ in range(30):
            p = softmax(x @ theta.reshape(D + 1, N))
            grad = (x.T @ (p - np.eye(N)[y])).ravel() / len(s) + l2 * theta
            hess = l2 * np.eye(theta.size)
            for row, prob in zip(x, p):
                hess += np.kron(np.outer(row, row), np.diag(prob) - np.outer(prob, prob)) / len(s)
            theta -= np.linalg.solve(hess, grad)
        return softmax(np.hstack([unit(q), np.ones((len(q), 1))]) @ theta.reshape(D + 1, N))

    expected = per_episode(episode, ref)
    got = softmax(run(logreg, episode, l2=l2, steps=200))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    with pytest.raises(ValueError, match="l2 > 0"):
        run(logreg, episode, l2=0.0)


def test_logreg_episodes_are_independent_of_batching(episode):
    together = run(logreg, episode)
    alone = [logreg(torch.from_numpy(episode["support"][e:e + 1]), torch.from_numpy(episode["labels"][e:e + 1]),
                    torch.from_numpy(episode["query"][e:e + 1]), N)[0].numpy() for e in range(E)]
    np.testing.assert_allclose(together, np.stack(alone), atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("k", [1, 3, None])
def test_knn_vote_shares_match_numpy(episode, metric, weighted, k):
    def ref(s, y, q):
        kk = K if k is None else k
        shares = np.zeros((len(q), N))
        for i in range(len(q)):
            if metric == "cosine":
                sim = np.array([q[i] @ s[j] / np.linalg.norm(q[i]) / np.linalg.norm(s[j]) for j in range(len(s))])
            else:
                sim = -np.array([np.linalg.norm(q[i] - s[j]) for j in range(len(s))])
            nearest = np.argsort(-sim)[:kk]
            for j in nearest:
                shares[i, y[j]] += np.exp(sim[j] / 0.1) if weighted else 1.0
            shares[i] /= shares[i].sum()
        return shares

    got = softmax(run(knn, episode, k=k, metric=metric, weighted=weighted, temperature=0.1))
    np.testing.assert_allclose(got, per_episode(episode, ref), atol=1e-5)


def test_bd_cspn_matches_numpy(episode):
    scale = 5.0

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    def ref(s, y, q):
        means = ref_means(s, y)
        shifted = q + s.mean(axis=0) - q.mean(axis=0)
        pseudo = [int(np.argmax([cos(x, means[c]) for c in range(N)])) for x in shifted]
        rectified = np.zeros((N, D))
        for c in range(N):
            members = [x for x, label in zip(s, y) if label == c] + [x for x, p in zip(shifted, pseudo) if p == c]
            weights = np.array([np.exp(scale * cos(x, means[c])) for x in members])
            rectified[c] = (weights[:, None] * np.array(members)).sum(axis=0) / weights.sum()
        return np.array([[scale * cos(x, rectified[c]) for c in range(N)] for x in q])

    np.testing.assert_allclose(run(bd_cspn, episode, scale=scale), per_episode(episode, ref), atol=1e-4)


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_soft_kmeans_matches_numpy(episode, iterations):
    scale = 2.0

    def ref(s, y, q):
        s, q = unit(s), unit(q)
        prototypes = ref_means(s, y)
        for _ in range(iterations):
            new = np.zeros_like(prototypes)
            for c in range(N):
                assign = np.array([softmax(-scale * ((x - prototypes) ** 2).sum(axis=1))[c] for x in q])
                new[c] = (s[y == c].sum(axis=0) + (assign[:, None] * q).sum(axis=0)) / ((y == c).sum() + assign.sum())
            prototypes = new
        return np.array([[-scale * np.sum((x - prototypes[c]) ** 2) for c in range(N)] for x in q])

    got = run(soft_kmeans, episode, iterations=iterations, scale=scale)
    np.testing.assert_allclose(got, per_episode(episode, ref), atol=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_support_order_does_not_matter(episode, name):
    order = np.random.default_rng(0).permutation(N * K)
    shuffled = dict(episode, support=episode["support"][:, order], labels=episode["labels"][:, order])
    np.testing.assert_allclose(softmax(run(METHODS[name], shuffled)), softmax(run(METHODS[name], episode)), atol=1e-5)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown few-shot method 'nope'.*protonet"):
        get_method("nope")
    with pytest.raises(ValueError, match="knn metric"):
        knn(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), torch.zeros(1, 1, 3), 2, metric="manhattan")
