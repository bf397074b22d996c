"""Timing shared by the step benchmarks: medians of two functions timed alternately."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(a: Callable[[], None], b: Callable[[], None], repeats: int, device: str) -> tuple[float, float]:
    """Median seconds of `a` and of `b` after one warm-up each, timed alternately so drift in machine load hits
    both alike."""
    a()
    b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)
