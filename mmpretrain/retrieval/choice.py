"""Memory budgets and the auto choice of a faiss index key under them (autofaiss's rules)."""

from __future__ import annotations

import math
import os
import re

from mmpretrain.errors import ConfigError
from mmpretrain.retrieval.core import Metric, check_metric

FLAT_MAX, HNSW_MAX, IVF_FLAT_MAX = 1_000, 10_000, 1_000_000
PQ_CODE_SIZES = (256, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4)

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_MEMORY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")


# ---------------------------------------------------------------------------------------------------- memory / choice


def parse_memory(budget: int | float | str | None) -> int | None:
    """Bytes from ``8_000_000_000``, ``"8GB"``, ``"512MB"`` or ``"2GiB"`` (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        value = float(budget)
    else:
        match = _MEMORY_RE.match(str(budget).lower())
        if match is None or match.group(2) not in _UNITS:
            raise ConfigError(f"memory_budget {budget!r} is not a size like 8GB, 512MB, 2GiB or a byte count")
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ConfigError(f"memory_budget must be positive, got {budget!r}")
    return int(value)


def _default_budget() -> int:
    """Half this machine's RAM: the index must fit next to the batch being added and the process itself."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _hnsw_bytes(n: int, m: int) -> int:
    """HNSW{m} graph bytes: 2m int32 links on level 0, ~m/(m-1) upper-level links, per-node bookkeeping."""
    return int(n * (4 * 2 * m + 4 * m / (m - 1) + 24))


def estimate_memory(index_key: str, n: int, dim: int) -> int:
    """Bytes an index of this factory key holds for ``n`` vectors of width ``dim`` (the keys auto-selection makes).

    Covers ``Flat``, ``HNSW{M}``, ``IVF{K}[_HNSW{M}],Flat`` and ``[OPQ{m}_{d}|PCA{d},]IVF{K}[_HNSW{M}],PQ{m}x8``;
    the figures (vectors, codes, 8-byte ids, graph links, centroids) are autofaiss-style estimates.
    """
    parts = index_key.replace(" ", "").split(",")
    total, d = 4096, dim  # headers
    if match := re.fullmatch(r"(?:OPQ(\d+)_|PCAR?)(\d+)", parts[0]):
        d = int(match.group(2))
        total += 4 * dim * (d + 1)
        parts = parts[1:]
    if len(parts) == 1 and parts[0] == "Flat":
        return total + n * (4 * d + 8)
    if len(parts) == 1 and (match := re.fullmatch(r"HNSW(\d+)", parts[0])):
        return total + n * (4 * d + 8) + _hnsw_bytes(n, int(match.group(1)))
    if len(parts) == 2 and (ivf := re.fullmatch(r"IVF(\d+)(?:_HNSW(\d+))?", parts[0])):
        nlist = int(ivf.group(1))
        total += nlist * (4 * d + 16) + (_hnsw_bytes(nlist, int(ivf.group(2))) if ivf.group(2) else 0)
        if parts[1] == "Flat":
            return total + n * (4 * d + 8)
        if pq := re.fullmatch(r"PQ(\d+)(?:x8)?", parts[1]):
            m = int(pq.group(1))
            return total + n * (m + 8) + 4 * 256 * d
    raise ValueError(f"cannot estimate the memory of index_key {index_key!r}; pass one of the auto-selected forms")


def _nlist(n: int) -> int:
    """IVF list count by autofaiss's rule: ~4·sqrt(n) (a power of two, >= 39 points each) under 1M, then fixed."""
    if n < IVF_FLAT_MAX:
        nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
        return max(1, min(nlist, 2 ** int(math.log2(max(n // 39, 1)))))
    if n < 10_000_000:
        return 16_384
    if n < 300_000_000:
        return 65_536
    return 131_072


def _candidates(n: int, dim: int, gpu: bool) -> list[str]:
    """Index keys in order of preference (most accurate first) for n vectors of width dim."""
    if n < FLAT_MAX:
        return ["Flat"]
    if n < HNSW_MAX:
        return ["Flat"] if gpu else ["HNSW32", "Flat"]
    nlist = _nlist(n)
    keys = [] if gpu else ["HNSW32"]
    if n < IVF_FLAT_MAX:
        keys.append(f"IVF{nlist},Flat")
    keys += [f"OPQ{m}_{4 * m},IVF{nlist}_HNSW32,PQ{m}x8" for m in PQ_CODE_SIZES if 4 * m <= dim]
    return keys


def choose_index_key(
    n: int, dim: int, memory_budget_bytes: int | str | None = None, metric: Metric = "ip", gpu: bool = False
) -> str:
    """Pick a faiss factory key for ``n`` vectors of width ``dim`` that fits the memory budget (autofaiss's rules).

    Flat under 1k vectors; HNSW32 under 10k or whenever it fits the budget (skipped on GPUs, which have no HNSW);
    IVF-Flat under 1M if it fits; else ``OPQ{m}_{4m},IVF{K}_HNSW32,PQ{m}x8`` with the largest code that fits
    (4 dimensions per sub-quantizer: fewer make PQ training crawl for little gain).

    Args:
        n: number of vectors.
        dim: vector width.
        memory_budget_bytes: bytes or a size string (``"8GB"``); ``None`` means half this machine's RAM.
        metric: ``"ip"`` or ``"l2"`` (every candidate supports both).
        gpu: whether the index will run on GPUs.

    Raises:
        ConfigError: if no candidate fits ``memory_budget``, naming the smallest candidate and what it needs.
    """
    check_metric(metric)
    if n < 1 or dim < 1:
        raise ValueError(f"need n >= 1 and dim >= 1, got n={n}, dim={dim}")
    budget = parse_memory(memory_budget_bytes)
    limit = _default_budget() if budget is None else budget
    sizes = {key: estimate_memory(key, n, dim) for key in _candidates(n, dim, gpu)}
    for key, size in sizes.items():
        if size <= limit:
            return key
    smallest = min(sizes, key=sizes.get)
    raise ConfigError(f"no index for {n} x {dim} vectors fits memory_budget={memory_budget_bytes!r} ({limit:,} bytes): "
                      f"the smallest candidate {smallest!r} needs about {sizes[smallest]:,} bytes")
