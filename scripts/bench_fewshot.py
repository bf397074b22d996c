"""Benchmark: vectorized episodic evaluation against per-episode Python loops, one JSON line on stdout.

10,000 five-way one-shot 15-query ProtoNet episodes over 20,000 × 384 clustered random features (100 classes).
Two loops are timed on a subset of episodes and scaled to episodes/s:

* ``easyfsl_loop`` — the usual implementation: easyfsl's ``TaskSampler`` (``random.sample`` of classes, then of
  items per class) as the batch sampler of a ``DataLoader`` over a features dataset, its episodic collate
  function, and ``PrototypicalNetworks`` (per-class mean prototypes, ``-cdist``), one episode at a time;
* ``lean_loop`` — the same maths with the DataLoader removed: NumPy sampling and tensor indexing per episode, the
  fastest a per-episode loop gets.

Usage: ``python scripts/bench_fewshot.py [--episodes 10000] [--loop-episodes 500] [--repeats 3] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mmpretrain.fewshot import evaluate_episodes


def make_features(rows: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: random unit-variance centres plus noise, so accuracies are neither 20% nor 100%."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    features = centres[labels] + 2.5 * rng.standard_normal((rows, dim), dtype=np.float32)
    return features, labels


class FeaturesDataset(Dataset):
    """easyfsl's ``FeaturesDataset``: one (embedding, label) pair per item."""

    def __init__(self, features: torch.Tensor, labels: list[int]) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.features[item], self.labels[item]

    def get_labels(self) -> list[int]:
        return self.labels


class TaskSampler(Sampler):
    """easyfsl's ``TaskSampler``: yields the dataset indices of one episode at a time."""

    def __init__(self, dataset: FeaturesDataset, n_way: int, n_shot: int, n_query: int, n_tasks: int) -> None:
        super().__init__()
        self.n_way, self.n_shot, self.n_query, self.n_tasks = n_way, n_shot, n_query, n_tasks
        self.items_per_label: dict[int, list[int]] = {}
        for item, label in enumerate(dataset.get_labels()):
            self.items_per_label.setdefault(label, []).append(item)

    def __len__(self) -> int:
        return self.n_tasks

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.n_tasks):
            yield torch.cat([
                torch.tensor(random.sample(self.items_per_label[label], self.n_shot + self.n_query))
                for label in random.sample(sorted(self.items_per_label), self.n_way)
            ]).tolist()

    def episodic_collate_fn(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
        for image, label in batch:                                          # easyfsl's input type checks
            if not isinstance(image, torch.Tensor) or not isinstance(label, int | torch.Tensor):
                raise TypeError("dataset items must be (Tensor, int)")
        true_class_ids = list({x[1] for x in batch})
        all_images = torch.cat([x[0].unsqueeze(0) for x in batch])
        all_images = all_images.reshape((self.n_way, self.n_shot + self.n_query, *all_images.shape[1:]))
        all_labels = torch.tensor([true_class_ids.index(x[1]) for x in batch]).reshape(
            (self.n_way, self.n_shot + self.n_query))
        support_images = all_images[:, : self.n_shot].reshape((-1, *all_images.shape[2:]))
        query_images = all_images[:, self.n_shot:].reshape((-1, *all_images.shape[2:]))
        support_labels = all_labels[:, : self.n_shot].flatten()
        query_labels = all_labels[:, self.n_shot:].flatten()
        return support_images, support_labels, query_images, query_labels


class PrototypicalNetworks(nn.Module):
    """easyfsl's ``PrototypicalNetworks`` on precomputed features (identity backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.prototypes = torch.empty(0)

    def process_support_set(self, support: torch.Tensor, support_labels: torch.Tensor) -> None:
        features = self.backbone(support)
        n_way = len(torch.unique(support_labels))
        self.prototypes = torch.cat([features[torch.nonzero(support_labels == label)].mean(0)
                                     for label in range(n_way)])

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(self.backbone(query), self.prototypes)


def easyfsl_loop(features: np.ndarray, labels: np.ndarray, episodes: int, seed: int) -> float:
    """easyfsl's ``evaluate`` (with ``use_tqdm=False``), one episode per DataLoader batch; pooled accuracy (%)."""
    random.seed(seed)
    dataset = FeaturesDataset(torch.from_numpy(features), labels.tolist())
    sampler = TaskSampler(dataset, n_way=5, n_shot=1, n_query=15, n_tasks=episodes)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)
    model = PrototypicalNetworks().eval()
    correct = total = 0
    with torch.no_grad():
        for support, support_labels, query, query_labels in loader:
            model.process_support_set(support, support_labels)
            predictions = model(query).detach().data
            correct += int((torch.max(predictions, 1)[1] == query_labels).sum().item())
            total += len(query_labels)
    return 100.0 * correct / total


def lean_loop(features: np.ndarray, labels: np.ndarray, episodes: int, seed: int) -> float:
    """The same episodes and maths without the DataLoader: NumPy sampling, tensor indexing; mean accuracy."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy(features)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    query_labels = torch.arange(5).repeat_interleave(15)
    accuracies = []
    with torch.no_grad():
        for _ in range(episodes):
            rows = np.stack([rng.choice(members[c], 16, replace=False) for c in rng.choice(len(members), 5, False)])
            episode = table[torch.from_numpy(rows)]                       # (5, 16, 384)
            prototypes = episode[:, 0]
            query = episode[:, 1:].reshape(-1, features.shape[1])
            predictions = (-torch.cdist(query, prototypes)).argmax(dim=1)
            accuracies.append((predictions == query_labels).float().mean().item())
    return 100.0 * float(np.mean(accuracies))


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median wall time over ``repeats`` runs after one warm-up, and the last run's accuracy."""
    accuracy = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        accuracy = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--loop-episodes", type=int, default=500, help="episodes timed for each loop, then scaled")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for both paths (default: every core; the loops gain nothing from more)")
    parser.add_argument("--device", default="cpu", help="device of the vectorized evaluator; the loops use the CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features, labels = make_features(args.rows, args.dim, args.classes, seed=0)

    vec_time, vec_result = timed(lambda: evaluate_episodes(
        features, labels, n_way=5, n_shot=1, n_query=15, episodes=args.episodes, method="protonet", seed=0,
        device=args.device).mean, args.repeats)
    easy_time, easy_acc = timed(lambda: easyfsl_loop(features, labels, args.loop_episodes, seed=0), args.repeats)
    lean_time, lean_acc = timed(lambda: lean_loop(features, labels, args.loop_episodes, seed=0), args.repeats)

    vec_rate = args.episodes / vec_time
    easy_rate = args.loop_episodes / easy_time
    lean_rate = args.loop_episodes / lean_time
    print(json.dumps({
        "benchmark": "fewshot_episodes",
        "method": "protonet",
        "n_way": 5, "n_shot": 1, "n_query": 15,
        "episodes": args.episodes,
        "features": [args.rows, args.dim],
        "classes": args.classes,
        "vectorized_episodes_per_s": round(vec_rate, 1),
        "vectorized_seconds": round(vec_time, 3),
        "vectorized_accuracy": round(vec_result, 4),
        "easyfsl_loop_episodes_per_s": round(easy_rate, 1),
        "easyfsl_loop_accuracy": round(easy_acc, 4),
        "lean_loop_episodes_per_s": round(lean_rate, 1),
        "lean_loop_accuracy": round(lean_acc, 4),
        "loop_episodes_timed": args.loop_episodes,
        "speedup_vs_easyfsl_loop": round(vec_rate / easy_rate, 1),
        "speedup_vs_lean_loop": round(vec_rate / lean_rate, 1),
        "target_speedup": 20,
        "repeats": args.repeats,
        "statistic": "median",
        "threads": args.threads,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
