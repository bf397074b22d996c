"""Few-shot classifiers on precomputed embeddings, batched over episodes.

Every method has the same interface so that the evaluator, the classifier and the CLI can treat them alike::

    scores = method(support, support_labels, query, n_way, **options)

with ``support`` (E, S, D), ``support_labels`` (E, S) int64 in ``[0, n_way)``, ``query`` (E, Q, D) and ``scores``
(E, Q, n_way): logits, i.e. ``softmax(scores, -1)`` are the class probabilities and ``argmax`` the prediction.
Support sets need not be balanced or ordered. Nothing loops over episodes, so one call scores thousands of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "METHODS",
    "TRANSDUCTIVE",
    "FewShotMethod",
    "bd_cspn",
    "class_means",
    "get_method",
    "inner",
    "knn",
    "logreg",
    "protonet",
    "protonet_cosine",
    "simpleshot",
    "simpleshot_l2n",
    "soft_kmeans",
    "squared_distances",
]

FewShotMethod = Callable[..., torch.Tensor]


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Per-class mean of each episode's features: (E, S, D) → (E, N, D); an absent class gets zeros."""
    one_hot = F.one_hot(labels, n_way).to(features.dtype)                  # (E, S, N)
    counts = one_hot.sum(dim=1).clamp_min(1.0)                              # (E, N)
    return one_hot.transpose(1, 2) @ features / counts.unsqueeze(-1)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched dot products ``a @ bᵀ``: (E, P, D) × (E, R, D) → (E, P, R).

    Computed as ``(b @ aᵀ)ᵀ`` when ``b`` has fewer rows: CPU GEMM kernels run 1.5× faster with the short side as
    rows (measured for 75 queries × 5 prototypes × 384 dimensions), and this product dominates evaluation. The
    result is made contiguous again: reductions over the last axis of a transposed view (argmax over classes)
    were measured 10× slower than the small copy.
    """
    if b.shape[1] < a.shape[1]:
        return (b @ a.transpose(1, 2)).transpose(1, 2).contiguous()
    return a @ b.transpose(1, 2)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched squared Euclidean distances (E, P, D) × (E, R, D) → (E, P, R), via one matmul."""
    a_sq = torch.linalg.vector_norm(a, dim=-1).square().unsqueeze(-1)
    b_sq = torch.linalg.vector_norm(b, dim=-1).square().unsqueeze(1)
    return (a_sq + b_sq - 2.0 * inner(a, b)).clamp_min(0.0)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return inner(F.normalize(a, dim=-1), F.normalize(b, dim=-1))


def protonet(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int) -> torch.Tensor:
    """Prototypical networks (Snell et al. 2017): nearest class mean in squared Euclidean distance.

    The scores are ``2·q·p − ‖p‖² = ‖q‖² − ‖q − p‖²``: the negative squared distance plus a per-query constant,
    which softmax and argmax ignore. Leaving ``‖q‖²`` out saves a full pass over the query features, a quarter of
    the method's memory traffic.
    """
    prototypes = class_means(support, support_labels, n_way)
    return 2.0 * inner(query, prototypes) - prototypes.square().sum(dim=-1).unsqueeze(1)


def protonet_cosine(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int, scale: float = 10.0
) -> torch.Tensor:
    """Cosine nearest centroid, as P>M>F uses on self-supervised ViT features: ``scale · cos(query, class mean)``.

    ``scale`` only sharpens the probabilities; the predictions do not depend on it.
    """
    return scale * _cosine(query, class_means(support, support_labels, n_way))


def simpleshot(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    base_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimpleShot with CL2N (Wang et al. 2019): subtract a mean, L2-normalise, nearest centroid (as :func:`protonet`).

    The paper subtracts the mean of the base-class (training) features, which removes the direction every
    embedding shares. Without ``base_mean`` this falls back to the mean of each episode's support set: the only
    mean available without base classes that uses no query data, so the method stays inductive.

    Args:
        base_mean: (D,) mean of the base-class features; ``None`` centers each episode on its support mean.
    """
    center = support.mean(dim=1, keepdim=True) if base_mean is None else base_mean.to(support)
    return simpleshot_l2n(support - center, support_labels, query - center, n_way)


def simpleshot_l2n(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int
) -> torch.Tensor:
    """SimpleShot with L2N: L2-normalise, then nearest centroid (:func:`protonet` scores, ``1 − ‖q − p‖²``)."""
    return protonet(F.normalize(support, dim=-1), support_labels, F.normalize(query, dim=-1), n_way)


def logreg(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    l2: float = 1e-2,
    steps: int = 100,
    normalize: bool = True,
) -> torch.Tensor:
    """Multinomial logistic regression on each support set (the "Rethinking few-shot" baseline).

    Minimises ``mean cross-entropy + l2/2 · (‖W‖² + ‖b‖²)`` with ``steps`` of Nesterov's accelerated gradient
    descent. Regularising the bias too (as liblinear does) makes the problem ``l2``-strongly convex; with Böhning's
    bound on the softmax curvature the smoothness ``L`` is known per episode, so the step ``1/L`` and the momentum
    ``(√κ − 1)/(√κ + 1)`` (κ = L/l2) need no tuning and convergence is linear. Gradients are analytic and every
    episode has its own step, so each follows exactly the trajectory it would follow alone.

    Args:
        l2: weight of the L2 penalty; larger converges faster and gives softer probabilities.
        steps: gradient steps (fixed, so the cost is predictable).
        normalize: L2-normalise the features first, which makes ``l2`` independent of the feature scale.
    """
    if l2 <= 0:
        raise ValueError(f"logreg needs l2 > 0 (it makes the problem strongly convex), got {l2}")
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    episodes, shots, dim = support.shape
    targets = F.one_hot(support_labels, n_way).to(support.dtype)            # (E, S, N)
    # Hessian of mean CE ≤ ½·mean‖[x, 1]‖² (Böhning), plus the penalty: a per-episode smoothness bound.
    smooth = (0.5 * (support.square().sum(dim=-1).mean(dim=-1) + 1.0) + l2).view(episodes, 1, 1)
    root_kappa = (smooth / l2).sqrt()
    momentum = (root_kappa - 1) / (root_kappa + 1)
    weight, bias = support.new_zeros(episodes, dim, n_way), support.new_zeros(episodes, 1, n_way)
    look_w, look_b = weight, bias
    for _ in range(steps):
        residual = (torch.softmax(support @ look_w + look_b, dim=-1) - targets) / shots   # d(mean CE)/d(logits)
        new_w = look_w - (support.transpose(1, 2) @ residual + l2 * look_w) / smooth
        new_b = look_b - (residual.sum(dim=1, keepdim=True) + l2 * look_b) / smooth
        look_w, look_b = new_w + momentum * (new_w - weight), new_b + momentum * (new_b - bias)
        weight, bias = new_w, new_b
    return query @ weight + bias


def knn(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    k: int | None = None,
    metric: str = "cosine",
    weighted: bool = True,
    temperature: float = 0.07,
) -> torch.Tensor:
    """k nearest support examples vote; returns the log of the vote shares.

    Args:
        k: neighbours; ``None`` means the average number of shots per class (1 in 1-shot, where kNN is 1-NN).
        metric: ``"cosine"`` similarity or ``"euclidean"`` (similarity = −distance).
        weighted: weight each vote by ``exp(similarity / temperature)`` (the instance-discrimination kNN of
            Wu et al. 2018); otherwise every neighbour counts once.
        temperature: softness of the weights.
    """
    if metric == "cosine":
        similarity = _cosine(query, support)
    elif metric == "euclidean":
        similarity = -squared_distances(query, support).sqrt()
    else:
        raise ValueError(f"knn metric must be 'cosine' or 'euclidean', got {metric!r}")
    shots = support.shape[1]
    k = min(shots, max(1, round(shots / n_way)) if k is None else k)
    top, index = similarity.topk(k, dim=-1)                                 # (E, Q, k)
    weights = torch.exp((top - top[..., :1]) / temperature) if weighted else torch.ones_like(top)
    neighbour_labels = support_labels.unsqueeze(1).expand(-1, query.shape[1], -1).gather(-1, index)
    votes = query.new_zeros(*query.shape[:2], n_way).scatter_add_(-1, neighbour_labels, weights)
    shares = votes / votes.sum(dim=-1, keepdim=True)
    return shares.clamp_min(torch.finfo(shares.dtype).tiny).log()


def bd_cspn(
    support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, n_way: int, scale: float = 10.0
) -> torch.Tensor:
    """BD-CSPN (Liu et al. 2020), transductive: prototypes rectified with pseudo-labelled queries.

    Queries are first shifted by ``mean(support) − mean(query)`` (cross-class bias), pseudo-labelled by cosine
    nearest prototype, and each prototype becomes the ``softmax(scale · cos)``-weighted mean of its support and
    pseudo-labelled queries (intra-class bias). Queries are then scored by ``scale · cos`` to the new prototypes.
    The weighting follows easyfsl's implementation with the paper's ε = ``scale``.
    """
    prototypes = class_means(support, support_labels, n_way)
    shifted = query + support.mean(dim=1, keepdim=True) - query.mean(dim=1, keepdim=True)
    support_hot = F.one_hot(support_labels, n_way).to(support.dtype)       # (E, S, N)
    query_cos = _cosine(shifted, prototypes)
    query_hot = F.one_hot(query_cos.argmax(dim=-1), n_way).to(query.dtype)  # (E, Q, N)
    support_w = support_hot * torch.exp(scale * _cosine(support, prototypes))
    query_w = query_hot * torch.exp(scale * query_cos)
    total = support_w.sum(dim=1) + query_w.sum(dim=1)                      # (E, N)
    rectified = (support_w.transpose(1, 2) @ support + query_w.transpose(1, 2) @ shifted) / total.unsqueeze(-1)
    return scale * _cosine(query, rectified)


def soft_kmeans(
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    n_way: int,
    iterations: int = 3,
    scale: float = 10.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Transductive soft k-means refinement of the prototypes (Ren et al. 2018).

    Starting from the class means, each iteration softly assigns queries with ``softmax(−scale · d²)`` and
    recomputes every prototype as the mean of its support examples (weight 1) and the queries (weight = their
    assignment). Queries are scored by ``−scale · d²`` to the final prototypes.

    Args:
        iterations: refinement steps; 0 gives a (scaled) ProtoNet.
        scale: inverse temperature of the assignments.
        normalize: L2-normalise features first so that ``scale`` means the same for any encoder.
    """
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    support_hot = F.one_hot(support_labels, n_way).to(support.dtype)
    support_sum = support_hot.transpose(1, 2) @ support                     # (E, N, D)
    support_count = support_hot.sum(dim=1)                                  # (E, N)
    prototypes = support_sum / support_count.clamp_min(1.0).unsqueeze(-1)
    for _ in range(iterations):
        assign = torch.softmax(-scale * squared_distances(query, prototypes), dim=-1)   # (E, Q, N)
        weight = (support_count + assign.sum(dim=1)).unsqueeze(-1)
        prototypes = (support_sum + assign.transpose(1, 2) @ query) / weight
    return -scale * squared_distances(query, prototypes)


METHODS: dict[str, FewShotMethod] = {
    "protonet": protonet,
    "protonet_cosine": protonet_cosine,
    "simpleshot": simpleshot,
    "simpleshot_l2n": simpleshot_l2n,
    "logreg": logreg,
    "knn": knn,
    "bd_cspn": bd_cspn,
    "soft_kmeans": soft_kmeans,
}
"""Registry of few-shot methods by name; add an entry to make a new method available everywhere."""

TRANSDUCTIVE = frozenset({"bd_cspn", "soft_kmeans"})
"""Methods whose scores for one query depend on the other queries scored in the same call."""


def get_method(method: str | FewShotMethod) -> FewShotMethod:
    """Resolve a method name (or pass a callable through), with an error listing the known names."""
    if callable(method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown few-shot method {method!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[method]
