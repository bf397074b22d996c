"""Pre-extracted frame shards, so large runs keep video decoding out of the training loop.

A frames directory, written by `prepare_frames` (or `python -m mmpretrain.cli.prepare_frames`):

    manifest.json     {"format": "mmpretrain-frames", "version": 1, "num_frames": F, "size": [H, W], "count": N,
                       "failed": M, "backend": ..., "sampling": "segment-middle",
                       "source": {"path": <video manifest>, "sha256": ...},
                       "shards": [{"file": "frames-00000.npy", "count": n0}, ...]}
    frames-NNNNN.npy  uint8 (n, F, H, W, 3) RGB clips, one row per video; np.load(mmap_mode="r") maps them
    index.jsonl       one line per stored video: {"id", "video", "shard", "row", "frames": [source frame indices],
                      "source_frames": frames in the source video}
    failed.jsonl      one line per video that did not decode: {"id", "video", "reason", "detail"}

Each video keeps F frames, the middle frame of F equal segments (evaluation segment sampling), so a training
clip of T <= F frames samples among them. Every file is written under a temporary name and renamed, and
manifest.json comes last: a directory without it is an unfinished run. Readers check every shard's row count
against the manifest and the index, and refuse a mismatch naming the shard.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mmpretrain._io import atomic_path, sha256_file, write_text_atomic
from mmpretrain.errors import ConfigError, DataError, MissingPathError, NotAFolderError, PathExistsError
from mmpretrain.video.io.decoding import BACKENDS, VideoDecodeError, decode_clip
from mmpretrain.video.io.manifest import read_video_manifest
from mmpretrain.video.io.sampling import make_sampler

log = logging.getLogger(__name__)

FORMAT = "mmpretrain-frames"
VERSION = 1
_SHARD = re.compile(r"frames-\d{5}\.npy")


def shard_file(index: int) -> str:
    """File name of shard `index` (frames-00000.npy, ...)."""
    return f"frames-{index:05d}.npy"


def _extract(job: tuple[str, str, int, tuple[int, int], str]) -> dict[str, Any]:
    """Decode one video's F frames (runs in a worker process; returns plain data so it pickles)."""
    vid, video, num_frames, size, backend = job
    sampler = make_sampler(num_frames, mode="segment", train=False, rng=None)
    seen: list[int] = []

    def sample(times: np.ndarray) -> np.ndarray:
        seen.append(len(times))
        return sampler(times)

    try:
        frames, indices = decode_clip(video, sample, size=size, backend=backend)
    except VideoDecodeError as err:
        return {"id": vid, "video": video, "reason": err.reason, "detail": err.detail}
    return {"id": vid, "video": video, "frames": frames, "indices": indices.tolist(), "total": seen[-1]}


class _ShardWriter:
    """Fill shards of `shard_size` rows in a scratch memmap; a full shard is renamed into place, the last one is
    copied to its exact size. Nothing appears under a final name until it is complete."""

    def __init__(self, root: Path, shard_size: int, clip_shape: tuple[int, ...]) -> None:
        self.root, self.shard_size, self.clip_shape = root, shard_size, clip_shape
        self.shards: list[dict[str, Any]] = []
        self.rows = 0
        self.buffer: np.memmap | None = None
        self.scratch = root / f".scratch-{os.getpid()}-{uuid.uuid4().hex}.npy"

    def add(self, clip: np.ndarray) -> tuple[str, int]:
        if self.buffer is None:
            shape = (self.shard_size, *self.clip_shape)
            self.buffer = np.lib.format.open_memmap(self.scratch, mode="w+", dtype=np.uint8, shape=shape)
        name, row = shard_file(len(self.shards)), self.rows
        self.buffer[row] = clip
        self.rows += 1
        if self.rows == self.shard_size:
            self._finish()
        return name, row

    def _finish(self) -> None:
        name = shard_file(len(self.shards))
        with atomic_path(self.root / name) as tmp:
            if self.rows == self.shard_size:
                self.buffer.flush()
                self.buffer = None
                os.replace(self.scratch, tmp)
            else:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(self.rows, *self.clip_shape))
                out[:] = self.buffer[: self.rows]
                out.flush()
                del out
                self.buffer = None
                self.scratch.unlink()
        self.shards.append({"file": name, "count": self.rows})
        self.rows = 0

    def close(self) -> list[dict[str, Any]]:
        if self.buffer is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        self.buffer = None
        self.scratch.unlink(missing_ok=True)


def _check_output(root: Path) -> set[str]:
    """Refuse a non-empty directory that is not a frames directory; return the shard files of an old run."""
    if not root.exists():
        return set()
    if not root.is_dir():
        raise NotAFolderError(f"frames output {root} exists and is not a directory")
    entries = {p.name for p in root.iterdir()}
    if not entries:
        return set()
    manifest = root / "manifest.json"
    try:
        ours = json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise PathExistsError(f"frames output {root} is not empty and is not a frames directory; choose another")
    return {name for name in entries if _SHARD.fullmatch(name)}


def _results(jobs: list[tuple], num_workers: int) -> Iterator[dict[str, Any]]:
    if num_workers <= 0:
        yield from map(_extract, jobs)
        return
    # fork, as DataLoader workers do: the children only decode, and start without importing torch again (the
    # package imports it); spawn where fork does not exist. Results come back in manifest order.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(num_workers) as pool:
        yield from pool.imap(_extract, jobs, chunksize=2)


def prepare_frames(
    manifest_path: str | Path,
    output_dir: str | Path,
    num_frames: int = 16,
    size: tuple[int, int] = (256, 256),
    backend: str = "decord",
    shard_size: int = 1024,
    num_workers: int = 0,
) -> Path:
    """Decode `num_frames` frames of every video in a manifest into shards (format in the module docstring).

    Videos that fail are listed in failed.jsonl with their reason and left out. `size` is (height, width); store
    somewhat larger than the training size so training crops keep detail.

    Returns:
        the frames directory.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if shard_size < 1 or num_frames < 1 or len(size) != 2 or min(size) < 1:
        raise ConfigError(
            f"need shard_size >= 1, num_frames >= 1 and a positive (height, width); got "
            f"{shard_size}, {num_frames}, {size}"
        )
    manifest_path = Path(manifest_path).resolve()
    records = read_video_manifest(manifest_path)
    root = Path(output_dir)
    stale = _check_output(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)  # an old run's directory reads as unfinished while rewritten
    size = (int(size[0]), int(size[1]))
    jobs = [(r.id, r.video, num_frames, size, backend) for r in records]
    writer = _ShardWriter(root, shard_size, (num_frames, *size, 3))
    index, failed = [], []
    try:
        for result in tqdm(_results(jobs, num_workers), total=len(jobs), desc="frames", unit="video"):
            if "frames" not in result:
                log.warning("skipping video %s (%s): %s", result["video"], result["reason"], result["detail"])
                failed.append(result)
                continue
            shard, row = writer.add(result.pop("frames"))
            entry = {"id": result["id"], "video": result["video"], "shard": shard, "row": row}
            index.append({**entry, "frames": result["indices"], "source_frames": result["total"]})
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    write_text_atomic(root / "index.jsonl", "".join(json.dumps(e) + "\n" for e in index))
    write_text_atomic(root / "failed.jsonl", "".join(json.dumps(e) + "\n" for e in failed))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_frames": num_frames,
        "size": list(size),
        "count": len(index),
        "failed": len(failed),
        "backend": backend,
        "sampling": "segment-middle",
        "source": {"path": str(manifest_path), "sha256": sha256_file(manifest_path)},
        "shards": shards,
    }
    write_text_atomic(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    for name in stale - {s["file"] for s in shards}:
        (root / name).unlink(missing_ok=True)
    return root


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if text.strip():
                try:
                    yield line, json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line}: invalid JSON ({err.msg})") from None


class FrameShards:
    """Read a frames directory: `get(id)` maps the video's (F, H, W, 3) frames without copying them.

    Shards open lazily in each process (the object pickles without its maps, for DataLoader workers).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise MissingPathError(
                f"{self.root} has no manifest.json: not a frames directory, or its preparation did not finish "
                "(write one with python -m mmpretrain.cli.prepare_frames)"
            )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        if found != FORMAT:
            raise DataError(f"{path}: not a frames manifest (format {found!r}, expected {FORMAT})")
        self.manifest = manifest
        self.num_frames = int(manifest["num_frames"])
        self.size = tuple(int(s) for s in manifest["size"])
        self._where: dict[str, tuple[str, int]] = {}
        self._frames: dict[str, list[int]] = {}
        rows: dict[str, int] = {}
        for line, entry in _jsonl(self.root / "index.jsonl"):
            vid = entry["id"]
            if vid in self._where:
                raise DataError(f"{self.root / 'index.jsonl'}:{line}: duplicate id '{vid}'")
            self._where[vid] = (entry["shard"], int(entry["row"]))
            self._frames[vid] = entry["frames"]
            rows[entry["shard"]] = rows.get(entry["shard"], 0) + 1
        self.failed: dict[str, tuple[str, str]] = {}
        failed_path = self.root / "failed.jsonl"
        if failed_path.is_file():
            self.failed = {e["id"]: (e["video"], e["reason"]) for _, e in _jsonl(failed_path)}
        self._check(rows)
        self._maps: dict[str, np.ndarray] = {}

    def _check(self, rows: dict[str, int]) -> None:
        listed = {s["file"]: int(s["count"]) for s in self.manifest["shards"]}
        unlisted = sorted(set(rows) - set(listed))
        if unlisted:
            raise DataError(
                f"{self.root}: index.jsonl points to shard {unlisted[0]}, which manifest.json does not list"
            )
        expected = (self.num_frames, *self.size, 3)
        for name, count in listed.items():
            path = self.root / name
            if not path.is_file():
                raise MissingPathError(f"{self.root}: shard {name} listed in manifest.json is missing")
            array = np.load(path, mmap_mode="r")
            if array.shape != (count, *expected) or array.dtype != np.uint8:
                raise DataError(
                    f"{self.root}: shard {name} holds {array.dtype} {array.shape}, manifest.json says uint8 "
                    f"{(count, *expected)}"
                )
            if rows.get(name, 0) != count:
                raise DataError(
                    f"{self.root}: shard {name} has {count} rows but index.jsonl lists {rows.get(name, 0)}"
                )
        if len(self._where) != int(self.manifest["count"]):
            raise DataError(
                f"{self.root}: index.jsonl lists {len(self._where)} videos, manifest.json says {self.manifest['count']}"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, vid: str) -> bool:
        return vid in self._where

    @property
    def ids(self) -> list[str]:
        return list(self._where)

    def knows(self, vid: str) -> bool:
        """Stored or recorded as failed: either way the directory was prepared from a manifest listing `vid`."""
        return vid in self._where or vid in self.failed

    def frame_indices(self, vid: str) -> list[int]:
        """The source-video frame indices stored for `vid`."""
        self._locate(vid)
        return list(self._frames[vid])

    def _locate(self, vid: str) -> tuple[str, int]:
        if vid in self._where:
            return self._where[vid]
        if vid in self.failed:
            video, reason = self.failed[vid]
            raise VideoDecodeError(video, reason, f"recorded in {self.root / 'failed.jsonl'}")
        raise KeyError(f"video id '{vid}' is not in frames directory {self.root}")

    def get(self, vid: str) -> np.ndarray:
        """Read-only (F, H, W, 3) uint8 view of the stored frames.

        Raises:
            KeyError: unknown id. VideoDecodeError: the video failed when the shards were prepared.
        """
        shard, row = self._locate(vid)
        array = self._maps.get(shard)
        if array is None:
            array = self._maps[shard] = np.load(self.root / shard, mmap_mode="r")
        return array[row]
