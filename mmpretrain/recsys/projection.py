"""PCA and PCA-whitening fitted once on a sample and saved, so items exported later are projected the same way.

A recommender trained on 64-d item vectors breaks silently if next week's items come out of a different PCA (the
axes are only defined up to rotation and sign). The projection is therefore a file: ``projection.npz`` (mean and
component matrix, read with ``allow_pickle=False``) plus ``projection.json`` (kind, sizes and a fingerprint over
the arrays). An export records the fingerprint and refuses to append with any other projection.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpretrain._io import atomic_path, read_saved_folder
from mmpretrain.errors import ConfigError, DataError

NPZ_FILE, JSON_FILE = "projection.npz", "projection.json"
FORMAT_NAME, FORMAT_VERSION = "mmpretrain.projection", 1
OUTPUT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Projection:
    """``y = (x - mean) @ components``: the top principal axes, scaled to unit variance when ``whiten``."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    whiten: bool
    fit_rows: int
    explained_variance_ratio: float

    @property
    def input_dim(self) -> int:
        """Width of the vectors the projection reads."""
        return int(self.components.shape[0])

    @property
    def output_dim(self) -> int:
        """Width of the projected vectors."""
        return int(self.components.shape[1])

    @property
    def kind(self) -> str:
        """``"pca"`` or ``"pca_whiten"``."""
        return "pca_whiten" if self.whiten else "pca"

    @property
    def fingerprint(self) -> str:
        """sha256 over the kind and the arrays' bytes: equal fingerprints project every vector identically."""
        digest = hashlib.sha256(f"{self.kind}:{self.input_dim}:{self.output_dim}\n".encode())
        for array in (self.mean, self.components):
            digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
        return digest.hexdigest()

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project ``(n, input_dim)`` vectors to float32 ``(n, output_dim)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"projection expects (n, {self.input_dim}) vectors, got shape {x.shape}")
        return (x - self.mean) @ self.components

    def describe(self) -> dict[str, Any]:
        """What ``projection.json`` holds (and export summaries repeat)."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind, "input_dim": self.input_dim,
                "output_dim": self.output_dim, "fit_rows": self.fit_rows,
                "explained_variance_ratio": self.explained_variance_ratio, "fingerprint": self.fingerprint}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``projection.npz`` and ``projection.json`` into ``directory`` atomically; returns the JSON path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / NPZ_FILE) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.mean.astype(np.float32), components=self.components.astype(np.float32),
                     variances=self.variances.astype(np.float64))
        with atomic_path(directory / JSON_FILE) as tmp:
            tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        return directory / JSON_FILE


def fit_projection(sample: np.ndarray, dim: int, whiten: bool = False, eps: float = 1e-6) -> Projection:
    """Fit PCA (or PCA-whitening) on ``sample`` from the eigenvectors of its covariance (float64).

    Each axis's sign is fixed so that its largest coefficient is positive, so refitting on the same sample gives
    the same file. Whitening divides by ``sqrt(variance + eps * largest variance)``: the sample's projected
    covariance is then the identity up to ``eps``, and near-zero axes cannot blow up.

    Raises:
        ConfigError: for ``dim`` outside ``1..input_dim`` or a sample too small to give ``dim`` axes variance.
    """
    x = np.asarray(sample, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"sample must be (n, d), got shape {x.shape}")
    n, d = x.shape
    if not 1 <= dim <= d:
        raise ConfigError(f"dim={dim} must be between 1 and the input width {d}: choose dim<={d}, or leave dim unset "
                          "(no projection)")
    if n <= dim:
        raise ConfigError(f"dim={dim} needs more than {dim} rows to fit a PCA; the sample has {n}: choose "
                          f"dim<={n - 1}, or leave dim unset (no projection)")
    mean = x.mean(axis=0)
    centered = x - mean
    covariance = centered.T @ centered / (n - 1)
    values, vectors = np.linalg.eigh(covariance)
    order = np.argsort(values)[::-1][:dim]
    variances, axes = np.clip(values[order], 0.0, None), vectors[:, order]
    axes *= np.where(axes[np.abs(axes).argmax(axis=0), np.arange(dim)] < 0, -1.0, 1.0)
    if whiten:
        axes = axes / np.sqrt(variances + eps * variances[0])
    total = float(np.clip(values, 0.0, None).sum())
    return Projection(mean.astype(np.float32), axes.astype(np.float32), variances, whiten, n,
                      float(variances.sum() / total) if total > 0 else 1.0)


def load_projection(path: str | os.PathLike) -> Projection:
    """Read a saved projection (its directory or either file), refusing a JSON that does not match the arrays."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    meta = read_saved_folder(directory, (NPZ_FILE, JSON_FILE), JSON_FILE, "projection")
    if meta.get("format") != FORMAT_NAME or meta.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{directory / JSON_FILE} is not a projection this version reads: {meta.get('format')!r} "
                         f"version {meta.get('version')!r}")
    with np.load(directory / NPZ_FILE, allow_pickle=False) as arrays:
        mean, components, variances = arrays["mean"], arrays["components"], arrays["variances"]
    projection = Projection(mean, components, variances, meta["kind"] == "pca_whiten", int(meta["fit_rows"]),
                            float(meta["explained_variance_ratio"]))
    if projection.fingerprint != meta["fingerprint"]:
        raise DataError(f"projection {directory}: {NPZ_FILE} does not match {JSON_FILE} (fingerprint "
                        f"{projection.fingerprint} vs {meta['fingerprint']}); the files were altered or mixed up")
    return projection


def prepare_features(
    x: np.ndarray, projection: Projection | None = None, normalize: bool = True, dtype: str = "float32"
) -> np.ndarray:
    """What an export writes for raw vectors ``x``: projected, L2-normalized if asked, cast to ``dtype``.

    Serving code calls this with the export's saved projection and settings to embed new items the same way.
    Rows of zero norm stay zero rather than becoming NaN.
    """
    if dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"dtype must be one of {OUTPUT_DTYPES}, got {dtype!r}")
    out = projection.transform(x) if projection is not None else np.asarray(x, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, np.finfo(np.float32).tiny)
    with np.errstate(over="ignore"):  # overflow to inf is refused by the caller, naming the item
        return out.astype(dtype)
