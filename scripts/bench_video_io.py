"""Benchmark video decoding for training clips; prints one JSON line.

A 10-second 1280x720 H.264 file at 30 fps (fixed GOP, default 250 frames; `--gop 30` for short GOPs, B-frames on)
is written once (cached under `--workdir`). Clips of 8 frames are drawn with training segment sampling, a different
random clip every time, and decoded at 224x224 by decord, PyAV seek-and-decode, PyAV full decode and PyAV auto, in
the same run and interleaved, median clips/s over repeats. Then a DataLoader with 2 workers reads a small
manifest of such files through `VideoTextDataset` (training crop, size 224) and reports clips/s, against the clips/s
of one pretraining step of `--model` (bench_video_model.py's base config by default): `loader_over_model` above 1
means two workers keep that model fed on this machine.

    python scripts/bench_video_io.py                   # GOP 250
    python scripts/bench_video_io.py --gop 30 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
from torch.utils.data import DataLoader

from mmpretrain.video.io import decoding
from mmpretrain.video.io.dataset import VideoTextDataset, collate_videos
from mmpretrain.video.io.manifest import read_video_manifest, write_video_manifest
from mmpretrain.video.io.sampling import make_sampler

# (name in the JSON, decode_clip backend, pyav_mode)
DECODERS = (
    ("decord", "decord", "auto"),
    ("pyav_seek", "pyav", "seek"),
    ("pyav_full", "pyav", "full"),
    ("pyav_auto", "pyav", "auto"),
)


def make_bench_video(path: Path, gop: int, seconds: int = 10, fps: int = 30, width: int = 1280, height: int = 720):
    """Textured background panning under moving blocks: every frame differs, as in real footage."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    yy, xx = np.mgrid[0:height, 0:width]
    texture = (((xx // 24 + yy // 24) % 2) * 70 + 50 + (xx * 7 + yy * 13) % 31).astype(np.uint8)
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {
            "preset": "veryfast",
            "crf": "23",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        for i in range(seconds * fps):
            frame = np.stack([np.roll(texture, 3 * i, 1), np.roll(texture, 2 * i, 0), texture[::-1]], axis=-1)
            for k in range(4):
                x, y = (97 * k + 11 * i) % (width - 160), (53 * k + 5 * i) % (height - 160)
                frame[y : y + 160, x : x + 160] = (60 * k, 255 - 50 * k, (i * 4) % 256)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def decode_rates(path: Path, repeats: int, clips: int, num_frames: int, size: int, seed: int) -> dict[str, Any]:
    """Median clips/s of each decoder; repeats interleave the decoders so machine noise hits all alike."""
    names = [d for d in DECODERS if d[1] != "decord" or decoding.decord is not None]
    times: dict[str, list[float]] = {name: [] for name, _, _ in names}
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for name, backend, mode in names:
            start = time.perf_counter()
            for _ in range(clips):
                sample = make_sampler(num_frames, mode="segment", train=True, rng=rng)
                decoding.decode_clip(path, sample, size=(size, size), backend=backend, pyav_mode=mode)
            times[name].append(clips / (time.perf_counter() - start))
    rates = {f"{name}_clips_s": round(statistics.median(t), 2) for name, t in times.items()}
    rates.setdefault("decord_clips_s", None)
    return rates


def dataloader_rate(
    path: Path,
    workdir: Path,
    videos: int,
    clips: int,
    workers: int,
    batch_size: int,
    num_frames: int,
    size: int,
    backend: str,
) -> float:
    """Clips/s through `VideoTextDataset` + DataLoader, after the first batch (worker start-up not counted)."""
    links = workdir / "loader"
    links.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(videos):
        link = links / f"clip-{i:03d}{path.suffix}"
        if not link.exists():
            link.symlink_to(path.resolve())
        entries.append({"id": f"clip-{i:03d}", "video": link.name, "title": f"benchmark clip {i}"})
    records = read_video_manifest(write_video_manifest(entries, links / "manifest.jsonl"))
    records = (records * (clips // len(records) + 2))[: clips + batch_size]
    dataset = VideoTextDataset(
        records, num_frames=num_frames, size=(size, size), train=True, backend=backend, crop_scale=(0.6, 1.0)
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_videos)
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch["frames"])
    return round(seen / (time.perf_counter() - start), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="cache the generated videos here (default: a temp dir)")
    parser.add_argument("--gop", type=int, default=250, help="keyframe interval of the test file")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=3, help="clips per decoder per repeat")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--loader-clips", type=int, default=16)
    parser.add_argument("--loader-backend", default="decord")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 repeats of 2 clips, 8 DataLoader clips")
    parser.add_argument("--model", choices=("base", "tiny", "none"), default="base",
                        help="pretraining step to compare the DataLoader with (bench_video_model.py's configs)")
    parser.add_argument("--model-device", default="cpu")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.clips, args.loader_clips = 2, 2, 8
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        start = time.perf_counter()
        video = make_bench_video(workdir / f"bench-720p-gop{args.gop}.mp4", args.gop)
        result: dict[str, Any] = {
            "bench": "video_io",
            "video": "1280x720 H.264 10 s 30 fps",
            "gop": args.gop,
            "num_frames": args.num_frames,
            "size": args.size,
            "cpus": os.cpu_count(),
            "decord_available": decoding.decord is not None,
            "video_write_s": round(time.perf_counter() - start, 2),
        }
        result.update(decode_rates(video, args.repeats, args.clips, args.num_frames, args.size, args.seed))
        rates = {name: result[f"{name}_clips_s"] for name, _, _ in DECODERS if result.get(f"{name}_clips_s")}
        best = max(rates, key=rates.get)
        result["best_backend"] = best
        decord_rate = result["decord_clips_s"]
        result["ratio_best_vs_decord"] = round(rates[best] / decord_rate, 3) if decord_rate else None
        result["dataloader_clips_s"] = dataloader_rate(
            video,
            workdir,
            4,
            args.loader_clips,
            args.workers,
            args.batch_size,
            args.num_frames,
            args.size,
            args.loader_backend,
        )
        result["dataloader_workers"] = args.workers
        result["dataloader_backend"] = args.loader_backend
        if args.model != "none":
            result.update(model_step_rate(args.model, args.model_device, result["dataloader_clips_s"]))
        print(json.dumps(result))


def model_step_rate(config: str, device: str, loader_clips_s: float) -> dict[str, Any]:
    """Clips/s of one pretraining step (bench_video_model.py) and how many such steps the DataLoader can feed."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_video_model import bench

    step = bench(config, None, 3, device, "bf16" if device.startswith("cuda") else "fp32")
    return {
        "model_config": config,
        "model_device": device,
        "model_clips_s": step["clips_per_s"],
        "loader_over_model": round(loader_clips_s / step["clips_per_s"], 3),
    }


if __name__ == "__main__":
    main()
