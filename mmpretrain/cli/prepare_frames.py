"""Pre-extract sampled frames of every video in a manifest into memory-mappable shards (see mmpretrain.video.io.frames).

    python -m mmpretrain.cli.prepare_frames MANIFEST OUTPUT --num-frames 16 --size 64 64 --backend decord --workers 2

Training then reads them with `data.frames_dir=OUTPUT` instead of decoding videos in the loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from mmpretrain.errors import MMPretrainError
from mmpretrain.video.io.decoding import BACKENDS
from mmpretrain.video.io.frames import prepare_frames


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mmpretrain.cli.prepare_frames",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("manifest", help="video manifest (.jsonl or .csv)")
    parser.add_argument("output", help="frames directory to write")
    parser.add_argument("--num-frames", type=int, default=16, help="frames stored per video (F)")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--backend", choices=BACKENDS, default="decord")
    parser.add_argument("--shard-size", type=int, default=1024, help="videos per shard")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: decode in this process)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        out = prepare_frames(
            args.manifest, args.output, args.num_frames, tuple(args.size), args.backend, args.shard_size, args.workers
        )
    except MMPretrainError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    meta = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    height, width = meta["size"]
    print(
        f"wrote {meta['count']} videos in {len(meta['shards'])} shards to {out} ({meta['num_frames']} frames at "
        f"{height}x{width}); {meta['failed']} failed (see failed.jsonl); {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
