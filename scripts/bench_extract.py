"""Benchmark the extraction path: prints one JSON line of images/s.

- ``raw_forward_ips``: a bare timm forward in ``inference_mode`` on a preprocessed float batch on the device;
- ``embed_ips``: ``ImageEncoder.embed`` on the same preprocessed batch (as uint8: device-side normalisation,
  forward, L2 normalisation) — the encoder's overhead over the model, target >= 0.95x of raw;
- ``encode_images_ips``: ``encode_images`` on uint8 HWC arrays (adds the CPU resize/crop per image);
- the same for bf16 autocast and channels_last, each against a raw forward with the same setting;
- ``e2e_jpeg_ips``: ``run_extraction`` (Lightning predict, DataLoader workers, store writing) over JPEG files;
- ``e2e_shard_jpeg_ips``: ``run_shard_extraction`` over the same JPEGs in two WebDataset shards (one reader per
  shard), and ``shards_vs_files``, its ratio to ``e2e_jpeg_ips``: the one pipeline costs the same from either source.

Timings are medians over ``--repeats``, with raw and encoder runs interleaved so a noisy machine hurts both alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import timm
import torch
from PIL import Image

from mmpretrain.data.shards import image_samples, write_shards
from mmpretrain.encoders import ImageEncoder, default_device
from mmpretrain.extraction import read_input, run_extraction, run_shard_extraction
from mmpretrain.hub import DEFAULT_PREPROCESSING


def _timed(fn: Callable[[], object], device: torch.device, inner: int) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls (GPU work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / inner


def _compare(
    runs: dict[str, Callable[[], object]], n: int, repeats: int, inner: int, device: torch.device
) -> dict[str, float]:
    """Images/s of each run: one warm-up each, then ``repeats`` interleaved rounds, median time per round."""
    for fn in runs.values():
        _timed(fn, device, 1)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn, device, inner))
    return {name: round(n / statistics.median(t), 2) for name, t in times.items()}


def _write_jpegs(folder: Path, count: int, rng: np.random.Generator) -> None:
    """Smooth random photos-like JPEGs (320x256), so decoding costs what real JPEGs cost."""
    for i in range(count):
        small = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((320, 256), Image.BICUBIC)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="swin_tiny_patch4_window7_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inner", type=int, default=1, help="calls per timed round (more on fast GPUs)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--jpegs", type=int, default=64, help="JPEG files for the end-to-end run")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the end-to-end run")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 repeats, 32 JPEGs")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.repeats, args.jpegs = 8, 2, 32
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device) if args.device else default_device()
    pre = dict(DEFAULT_PREPROCESSING)
    base = timm.create_model(args.model, pretrained=False, num_classes=0).eval()
    rng = np.random.default_rng(0)
    arrays = list(rng.integers(0, 256, (args.batch_size, 256, 256, 3), dtype=np.uint8))
    n = args.batch_size

    result: dict[str, object] = {
        "bench": "extract",
        "model": args.model,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads} threads",
        "batch_size": n,
        "repeats": args.repeats,
        "inner": args.inner,
    }
    for variant, kwargs in (("fp32", {}), ("bf16", {"dtype": "bf16"}), ("channels_last", {"channels_last": True})):
        encoder = ImageEncoder(copy.deepcopy(base), pre, args.model, device=device, **kwargs)
        pixels = encoder.preprocess(arrays).to(device)
        mean = torch.tensor(pre["mean"], device=device).view(1, 3, 1, 1)
        std = torch.tensor(pre["std"], device=device).view(1, 3, 1, 1)
        batch = (pixels.float() / 255 - mean) / std
        raw = copy.deepcopy(base).to(device)
        if variant == "channels_last":
            raw = raw.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = variant == "bf16"

        def raw_forward(raw: torch.nn.Module = raw, batch: torch.Tensor = batch, autocast: bool = autocast) -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                raw(batch)

        def embed(encoder: ImageEncoder = encoder, pixels: torch.Tensor = pixels) -> None:
            with torch.inference_mode():
                encoder.embed(pixels)

        def encode(encoder: ImageEncoder = encoder) -> None:
            encoder.encode_images(arrays, batch_size=n)

        ips = _compare({"raw": raw_forward, "embed": embed, "encode": encode}, n, args.repeats, args.inner, device)
        suffix = "" if variant == "fp32" else f"_{variant}"
        result[f"raw_forward_ips{suffix}"] = ips["raw"]
        result[f"embed_ips{suffix}"] = ips["embed"]
        result[f"encode_images_ips{suffix}"] = ips["encode"]
        result[f"embed_vs_raw{suffix}"] = round(ips["embed"] / ips["raw"], 3)
        result[f"encode_images_vs_raw{suffix}"] = round(ips["encode"] / ips["raw"], 3)
        del encoder, raw

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        _write_jpegs(folder, args.jpegs, rng)
        encoder = ImageEncoder(copy.deepcopy(base), pre, args.model, device="cpu")
        trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False)
        start = time.perf_counter()
        summary = run_extraction(encoder, read_input(folder), Path(tmp) / "store", trainer, batch_size=n,
                                 num_workers=args.workers, shard_size=max(1, args.jpegs // 2))
        elapsed = time.perf_counter() - start
        assert summary is not None and summary["count"] == args.jpegs, summary
        result["e2e_jpeg_ips"] = round(args.jpegs / elapsed, 2)
        jpegs = sorted(str(p) for p in folder.glob("*.jpg"))
        shards = write_shards(image_samples(jpegs, folder), Path(tmp) / "shards", maxcount=-(-args.jpegs // 2))
        start = time.perf_counter()
        summary = run_shard_extraction(encoder, [str(p) for p in shards], Path(tmp) / "shard_store", trainer,
                                       batch_size=n, num_workers=args.workers)
        elapsed = time.perf_counter() - start
        assert summary is not None and summary["count"] == args.jpegs, summary
        result["e2e_shard_jpeg_ips"] = round(args.jpegs / elapsed, 2)
        result["shards_vs_files"] = round(result["e2e_shard_jpeg_ips"] / result["e2e_jpeg_ips"], 3)
        result["e2e_jpegs"] = args.jpegs
        result["e2e_workers"] = args.workers
    print(json.dumps(result))


if __name__ == "__main__":
    main()
