"""Data benchmark: MoBY's two BYOL views per second per core from a folder, from WebDataset shards and through the
official Transformer-SSL pipeline, and video clips per second from a folder vs shards; prints one JSON line.

The same JPEG images (ImageNet-like 500x375, smooth content plus noise, quality 90) are written once; each
pipeline reads them in one process with one torch thread (per core), in interleaved chunks of a few items, median
of the per-chunk rates (load changes on a shared machine then hit every pipeline alike). The official pipeline is
Transformer-SSL's data/build.py (BYOL type): torchvision transforms on a PIL image (bilinear RandomResizedCrop,
flip, ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, PIL Gaussian blur with sigma ~ U(0.1, 2) p 1.0 /
0.1, PIL solarize p 0 / 0.2), the image decoded once for both views. Targets: shards_vs_folder >= 1.0,
project_vs_official >= 1.5. ``project_no_draft`` runs the project's pipeline with JPEG draft decoding off, to
show what the reduced-size decoding contributes, and ``recipe_compose`` the same two ``T.Compose`` views run by
torchvision step by step (torchvision's colour jitter, the project's PIL blur): the executor's gain over its own
recipe (vectorized hue, single-channel grey views; `mmpretrain.data.color`).

Videos: H.264 MP4 clips (--video-size, --video-frames at 30 fps) read as training clips (8 frames, 224 px, crop
0.6-1) by `VideoTextDataset` from a manifest and by the shard reader from shards of the same files.

    python scripts/bench_data.py                     # 256 images, 24 videos
    python scripts/bench_data.py --quick
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from mmpretrain.data import ImageDataset, moby_transform
from mmpretrain.data.shards import ImageShardDecoder, ShardDataset, expand_shards, image_samples, shard_counts
from mmpretrain.data.shards import write_shards as write_shard_files


class OfficialBlur:
    """Transformer-SSL's GaussianBlur: PIL's filter with sigma drawn from numpy."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))


def official_views(size: int = 224, crop: float = 0.08) -> tuple[T.Compose, T.Compose]:
    """The official MoBY (BYOL) view pipelines, as Transformer-SSL's build_transform composes them."""
    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    common = [T.RandomResizedCrop(size, scale=(crop, 1.0)), T.RandomHorizontalFlip(),
              T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    view_1 = T.Compose([*common, T.RandomApply([OfficialBlur()], p=1.0), T.ToTensor(), normalize])
    common = [T.RandomResizedCrop(size, scale=(crop, 1.0)), T.RandomHorizontalFlip(),
              T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)]
    view_2 = T.Compose([*common, T.RandomApply([OfficialBlur()], p=0.1), T.RandomApply([ImageOps.solarize], p=0.2),
                        T.ToTensor(), normalize])
    return view_1, view_2


def make_images(folder: Path, count: int, width: int, height: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"c{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def make_videos(folder: Path, count: int, size: tuple[int, int], frames: int) -> Path:
    """H.264 MP4 clips of a moving gradient and a manifest of them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(count):
        path = folder / f"v{i:03d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=30, options={"g": "30"})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for t in range(frames):
                rgb = np.stack([(xs + 3 * t + 7 * i) % 256, (ys + 2 * t) % 256, (xs + ys + t) % 256], -1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        lines.append(json.dumps({"id": f"v{i:03d}", "video": path.name, "title": f"gradient {i}"}))
    manifest = folder / "videos.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def by_index(dataset) -> Iterator:
    """A map-style dataset read index by index."""
    return (dataset[i] for i in range(len(dataset)))


def interleaved(pipelines: dict[str, Callable[[], Iterable]], chunk: int, chunks: int) -> dict[str, float]:
    """Items per second of each pipeline: ``chunk`` items of each in turn, ``chunks`` turns after a warm-up,
    median of the per-chunk rates, so load changes on a shared machine hit every pipeline alike."""
    iterators = {name: iter(make()) for name, make in pipelines.items()}

    def pull(name: str) -> None:
        done = 0
        while done < chunk:
            try:
                next(iterators[name])
                done += 1
            except StopIteration:
                iterators[name] = iter(pipelines[name]())

    for name in pipelines:
        pull(name)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(chunks):
        for name in pipelines:
            start = time.perf_counter()
            pull(name)
            rates[name].append(chunk / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--jpeg-size", type=int, nargs=2, default=(500, 375), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--video-size", type=int, nargs=2, default=(360, 640), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--video-frames", type=int, default=90)
    parser.add_argument("--chunk", type=int, default=8, help="images per timed chunk (videos: a quarter)")
    parser.add_argument("--chunks", type=int, default=24, help="timed chunks per pipeline")
    parser.add_argument("--quick", action="store_true", help="64 images, 8 videos, 8 chunks")
    args = parser.parse_args()
    if args.quick:
        args.images, args.videos, args.chunks = 64, 8, 8
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_images(root / "images", args.images, *args.jpeg_size)
        write_shard_files(image_samples(paths, root / "images"), root / "shards", maxcount=64)
        urls = expand_shards(" ".join(sorted(str(p) for p in (root / "shards").glob("*.tar"))))
        counts = shard_counts(urls)
        ours = moby_transform(args.image_size)
        no_draft = moby_transform(args.image_size)
        no_draft.draft = False
        official_1, official_2 = official_views(args.image_size)

        def compose(image: Image.Image) -> tuple:
            """The recipe's two T.Compose views run by torchvision step by step (the pipeline before)."""
            return ours.view_1(image), ours.view_2(image)

        def official() -> Iterator:
            for path in paths:
                with open(path, "rb") as f:
                    image = Image.open(f).convert("RGB")  # torchvision's pil_loader, as ImageFolder reads
                yield official_1(image), official_2(image)

        images = interleaved({
            "folder": lambda: by_index(ImageDataset(paths, ours)),
            "shards": lambda: ShardDataset(urls, counts, ImageShardDecoder(ours), batch_size=1, pad=False),
            "official": official,
            "project_no_draft": lambda: by_index(ImageDataset(paths, no_draft)),
            "recipe_compose": lambda: by_index(ImageDataset(paths, compose)),
        }, args.chunk, args.chunks)

        from mmpretrain.video.io.dataset import ClipReader, SampleVocab, VideoTextDataset
        from mmpretrain.video.io.manifest import read_video_manifest
        from mmpretrain.video.io.shards import VideoShardDecoder, manifest_samples

        manifest = make_videos(root / "videos", args.videos, tuple(args.video_size), args.video_frames)
        records = read_video_manifest(manifest)
        write_shard_files(manifest_samples(manifest), root / "video_shards", maxcount=8)
        vurls = expand_shards(" ".join(sorted(str(p) for p in (root / "video_shards").glob("*.tar"))))
        vcounts = shard_counts(vurls)
        reader = ClipReader(8, (224, 224), train=True, crop_scale=(0.6, 1.0))
        videos = interleaved({
            "folder": lambda: by_index(VideoTextDataset(records, 8, (224, 224), crop_scale=(0.6, 1.0))),
            "shards": lambda: ShardDataset(vurls, vcounts, VideoShardDecoder(reader, SampleVocab()), batch_size=1,
                                           pad=False),
        }, max(1, args.chunk // 4), args.chunks)
    print(json.dumps({
        "two_views_per_s_per_core": {k: round(v, 2) for k, v in images.items()},
        "shards_vs_folder": round(images["shards"] / images["folder"], 3),
        "project_vs_official": round(images["folder"] / images["official"], 3),
        "draft_speedup": round(images["folder"] / images["project_no_draft"], 3),
        "video_clips_per_s_per_core": {k: round(v, 2) for k, v in videos.items()},
        "video_shards_vs_folder": round(videos["shards"] / videos["folder"], 3),
        "images": args.images, "jpeg_size": list(args.jpeg_size), "image_size": args.image_size,
        "videos": args.videos, "video_size": list(args.video_size), "video_frames": args.video_frames,
        "chunk": args.chunk, "chunks": args.chunks, "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
