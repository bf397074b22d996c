"""Episode sampling: N-way K-shot Q-query tasks drawn all at once as index tensors, and base/novel class splits.

Drawing every episode in one vectorized pass (instead of a Python loop per episode, as a ``TaskSampler`` does) is
what makes 10,000-episode evaluations, the literature's standard, take seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["Episodes", "encode_labels", "sample_episodes", "split_classes"]


@dataclass(frozen=True)
class Episodes:
    """A batch of episodes as dataset row indices.

    Support and query are laid out class-major: way ``w`` owns support columns ``w*K … w*K+K-1`` and query
    columns ``w*Q … w*Q+Q-1``, so episode-local labels are implied by position (see ``support_labels``).

    Attributes:
        support: (E, N*K) int64 row indices of the support examples.
        query: (E, N*Q) int64 row indices of the query examples.
        classes: (E, N) int64 indices into ``class_names`` of each episode's ways.
        class_names: the distinct labels, sorted; ``class_names[classes]`` gives the original labels.
        n_way: N.
        n_shot: K.
        n_query: Q.
    """

    support: torch.Tensor
    query: torch.Tensor
    classes: torch.Tensor
    class_names: np.ndarray
    n_way: int
    n_shot: int
    n_query: int

    def __len__(self) -> int:
        return self.support.shape[0]

    @property
    def support_labels(self) -> torch.Tensor:
        """(E, N*K) episode-local labels 0…N-1 of the support examples."""
        return _local_labels(len(self), self.n_way, self.n_shot)

    @property
    def query_labels(self) -> torch.Tensor:
        """(E, N*Q) episode-local labels 0…N-1 of the query examples."""
        return _local_labels(len(self), self.n_way, self.n_query)


def _local_labels(episodes: int, n_way: int, per_class: int) -> torch.Tensor:
    return torch.arange(n_way).repeat_interleave(per_class).expand(episodes, -1)


def encode_labels(labels: Sequence | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary hashable labels to contiguous codes.

    Args:
        labels: one label per row (strings, ints, ...).

    Returns:
        ``(class_names, codes)``: the sorted distinct labels and an int64 code per row.
    """
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    class_names, codes = np.unique(array, return_inverse=True)
    return class_names, codes.astype(np.int64)


def split_classes(
    labels: Sequence | np.ndarray | torch.Tensor, n_base: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into class-disjoint base and novel sets.

    Base classes supply SimpleShot's centering mean (and any training); episodes are drawn from novel classes
    only, so no evaluated class was ever seen as a base class.

    Args:
        labels: one label per row.
        n_base: how many classes go to the base set, chosen at random.
        seed: seed of the class permutation.

    Returns:
        ``(base_mask, novel_mask)``: boolean row masks; every class lies entirely in one of them.
    """
    class_names, codes = encode_labels(labels)
    if not 0 < n_base < len(class_names):
        raise ValueError(f"n_base must be between 1 and {len(class_names) - 1} (the labels hold "
                         f"{len(class_names)} classes), got {n_base}")
    is_base = np.zeros(len(class_names), dtype=bool)
    is_base[np.random.default_rng(seed).permutation(len(class_names))[:n_base]] = True
    base_mask = is_base[codes]
    return base_mask, ~base_mask


def sample_episodes(
    labels: Sequence | np.ndarray | torch.Tensor,
    n_way: int = 5,
    n_shot: int = 1,
    n_query: int = 15,
    episodes: int = 1000,
    seed: int = 0,
) -> Episodes:
    """Draw N-way K-shot Q-query episodes, all at once.

    Each episode picks N distinct classes uniformly, in random order, among the eligible ones (those with at least
    K+Q rows), then K+Q distinct rows of each class uniformly: K of them, a uniform random sample, as support and
    the rest as query (the query order within a class is not shuffled; no method depends on it). Classes with
    fewer rows are left out with a warning, because a long tail is normal in real data; too few eligible classes
    is an error.

    Args:
        labels: one label per row (any hashable type).
        n_way: classes per episode (N).
        n_shot: support examples per class (K).
        n_query: query examples per class (Q).
        episodes: number of episodes (E).
        seed: the draw is a pure function of the labels, the sizes and this seed.

    Returns:
        The episodes as index tensors on the CPU.

    Raises:
        ValueError: on non-positive sizes, fewer than N classes, or fewer than N classes with K+Q rows.
    """
    for name, value in (("n_way", n_way), ("n_shot", n_shot), ("n_query", n_query), ("episodes", episodes)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    class_names, codes = encode_labels(labels)
    need = n_shot + n_query
    if len(class_names) < n_way:
        raise ValueError(f"{n_way}-way episodes need at least {n_way} classes, but the labels hold only "
                         f"{len(class_names)}: {_describe(class_names)}")
    counts = np.bincount(codes, minlength=len(class_names))
    short = np.flatnonzero(counts < need)
    eligible = np.flatnonzero(counts >= need)
    if len(eligible) < n_way:
        raise ValueError(f"{n_way}-way {n_shot}-shot {n_query}-query episodes need {n_way} classes with at least "
                         f"{need} examples each, but only {len(eligible)} of {len(class_names)} classes have that "
                         f"many; too small: {_describe_counts(class_names, counts, short)}")
    if len(short):
        logger.warning("Leaving %d of %d classes out of the episodes: fewer than %d (n_shot + n_query) examples: %s",
                       len(short), len(class_names), need, _describe_counts(class_names, counts, short))

    generator = torch.Generator().manual_seed(seed)
    way_pick = _choose_distinct(torch.full((episodes,), len(eligible)), n_way, n_way, generator)
    classes = torch.from_numpy(eligible)[way_pick]                          # (E, N)

    order = torch.from_numpy(np.argsort(codes, kind="stable"))              # rows grouped by class
    starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
    positions = _choose_distinct(torch.from_numpy(counts)[classes], need, n_shot, generator)   # (E, N, K+Q)
    rows = order[starts[classes].unsqueeze(-1) + positions]
    return Episodes(
        support=rows[..., :n_shot].reshape(episodes, n_way * n_shot),
        query=rows[..., n_shot:].reshape(episodes, n_way * n_query),
        classes=classes,
        class_names=class_names,
        n_way=n_way,
        n_shot=n_shot,
        n_query=n_query,
    )


def _choose_distinct(population: torch.Tensor, m: int, ordered: int, generator: torch.Generator) -> torch.Tensor:
    """For every entry ``c`` of ``population``, draw ``m`` distinct integers from ``[0, c)``: shape (..., m).

    Floyd's algorithm, vectorized over entries, draws a uniform random subset in ``m`` steps of O(entries·m) work,
    independent of the class sizes (a class of a million rows costs no more than one of twenty). A partial
    Fisher-Yates shuffle then makes the first ``ordered`` values a uniform random ordered sample of that subset;
    the order of the remaining values is not randomised, which costs nothing for a query set.
    """
    chosen = torch.empty((m, *population.shape), dtype=torch.int64)
    for step in range(m):
        upper = population - m + step                                        # Floyd: draw from [0, upper]
        draw = _below(upper + 1, generator)
        if step:
            draw = torch.where((chosen[:step] == draw).any(dim=0), upper, draw)
        chosen[step] = draw
    chosen = chosen.movedim(0, -1).contiguous()
    for i in range(min(ordered, m - 1)):
        j = (i + _below(torch.full(population.shape, m - i), generator)).unsqueeze(-1)
        head = chosen[..., i].clone()
        chosen[..., i] = chosen.gather(-1, j).squeeze(-1)
        chosen.scatter_(-1, j, head.unsqueeze(-1))
    return chosen


def _below(bound: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform integers in ``[0, bound)`` elementwise; 62 random bits keep the modulo bias below 2⁻³⁰."""
    return torch.randint(0, 2**62, bound.shape, generator=generator) % bound


def _name(label: object) -> str:
    return repr(label.item() if isinstance(label, np.generic) else label)


def _describe(class_names: np.ndarray, limit: int = 10) -> str:
    more = f" and {len(class_names) - limit} more" if len(class_names) > limit else ""
    return "[" + ", ".join(_name(name) for name in class_names[:limit]) + "]" + more


def _describe_counts(class_names: np.ndarray, counts: np.ndarray, which: np.ndarray, limit: int = 10) -> str:
    more = f" and {len(which) - limit} more" if len(which) > limit else ""
    return "{" + ", ".join(f"{_name(class_names[i])}: {counts[i]}" for i in which[:limit]) + "}" + more
