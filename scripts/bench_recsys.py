"""Benchmark recommendation-feature export and the item-to-item table; prints one JSON line.

An embedding store of 200,000 clustered 256-d vectors is exported as Parquet, EasyRec CSV and npy at dim 64 (PCA
fitted on a 100k sample, L2-normalized): rows/s of each, PCA fit included (and reported apart). Then the top-50
item-to-item table over the 64-d features is built twice in the same run: through the auto retrieval index
(IVF-Flat, nprobe tuned to recall 0.95) and by brute force (exact faiss Flat, queries chunked, never an n x n
matrix), with the recall of the index table against the exact one.

    python scripts/bench_recsys.py                     # 200k items
    python scripts/bench_recsys.py --n 20000 --k 20    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmpretrain.embeddings import open_store, write_store
from mmpretrain.recsys import FORMATS, export_features, item_to_item, read_features


def clustered(n: int, dim: int, centers: int, latent: int, noise: float, seed: int) -> np.ndarray:
    """Embedding-like float32 vectors: topics of uneven size, each spread along a few directions, plus noise."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim), dtype=np.float32)
    bases = rng.standard_normal((centers, latent, dim), dtype=np.float32) / np.sqrt(latent, dtype=np.float32)
    weights = rng.dirichlet(np.full(centers, 2.0))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        stop = min(start + 10_000, n)
        which = rng.choice(centers, size=stop - start, p=weights)
        z = rng.standard_normal((stop - start, latent), dtype=np.float32)
        out[start:stop] = means[which] + np.einsum("nl,nld->nd", z, bases[which])
        out[start:stop] += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def pairs(path: Path) -> pa.Array:
    """``item_id \\x1f neighbor_id`` of every row of a neighbour table."""
    table = pq.read_table(path, columns=["item_id", "neighbor_id"])
    return pc.binary_join_element_wise(table.column("item_id"), table.column("neighbor_id"), "\x1f")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="items")
    parser.add_argument("--dim-in", type=int, default=256, help="store width")
    parser.add_argument("--dim", type=int, default=64, help="PCA width of the features")
    parser.add_argument("--k", type=int, default=50, help="neighbours per item")
    parser.add_argument("--centers", type=int, default=1_000)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_recsys_") as tmp:
        root = Path(tmp)
        x = clustered(args.n, args.dim_in, args.centers, args.latent, args.noise, args.seed)
        write_store(root / "store", x, {"id": [f"item{i:07d}" for i in range(args.n)]}, encoder="bench",
                    normalized=False, shard_size=50_000)
        del x
        store = open_store(root / "store", verify="counts")
        export = {}
        for fmt in FORMATS:
            summary = export_features(store, root / fmt, format=fmt, dim=args.dim, seed=args.seed)
            export[fmt] = {"rows_per_s": round(summary["rows_per_s"]), "seconds": round(summary["seconds"], 2),
                           "pca_fit_seconds": round(summary["fit_seconds"], 2)}
        ids, features = read_features(root / "parquet")

        tic = time.perf_counter()
        indexed = item_to_item(features, root / "i2i_index.parquet", ids, args.k,
                               target_recall=args.target_recall, seed=args.seed)
        index_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        exact = item_to_item(features, root / "i2i_exact.parquet", ids, args.k, index_key="Flat")
        exact_seconds = time.perf_counter() - tic
        truth = pairs(root / "i2i_exact.parquet")
        found = pc.sum(pc.is_in(truth, value_set=pairs(root / "i2i_index.parquet"))).as_py()

    print(json.dumps({
        "items": args.n, "dim_in": args.dim_in, "dim": args.dim, "export": export,
        "i2i": {"k": args.k, "index_key": indexed["index_key"], "search_params": indexed["search_params"],
                "index_seconds": round(index_seconds, 2), "index_build_seconds": round(indexed["build_seconds"], 2),
                "exact_seconds": round(exact_seconds, 2), "speedup": round(exact_seconds / index_seconds, 2),
                f"recall@{args.k}": round(found / len(truth), 4), "rows": indexed["rows"], "exact_rows": exact["rows"]},
        "threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
