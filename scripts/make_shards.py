"""Turn a folder of images, a file list or a video manifest into WebDataset shards (with ``webdataset.ShardWriter``).

    python scripts/make_shards.py images/ shards/ --maxcount 1000            # a folder (recursive)
    python scripts/make_shards.py list.txt shards/                             # path or path<TAB>label per line
    python scripts/make_shards.py videos.jsonl shards/ --prefix videos         # a video manifest (video2dataset layout)

Writes ``OUTPUT/{prefix}-NNNNNN.tar`` and ``OUTPUT/shards.json`` (sample counts, so readers need not count, and the
class and tag lists of labelled sources: a folder with one subfolder per class keeps its class order, the one
evaluation reads), and prints the brace pattern to pass as ``data.shards=`` or ``input=``. Media bytes are copied,
never re-encoded. Write a train and a val split into one folder with two prefixes (``--prefix train`` / ``val``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from mmpretrain.data.shards import image_samples, write_shards
from mmpretrain.data.sources import labeled_folder, read_file_list, scan_images


def _samples(source: Path):
    """The samples and the class list (None: sorted labels seen, or no labels)."""
    if source.is_dir():
        found = scan_images(source, key="source")
        if not all(len(Path(p).relative_to(source).parts) > 1 for p in found.paths):
            return image_samples(found.paths, source), None
        found = labeled_folder(source, key="source")  # one subfolder per class: its classes, as evaluation reads them
        return image_samples(found.paths, source, [found.classes[i] for i in found.labels]), found.classes
    if source.suffix.lower() in (".jsonl", ".json", ".csv"):
        from mmpretrain.video.io.shards import manifest_samples

        return manifest_samples(source), None
    found = read_file_list(source, key="source")
    if found.labels is None:
        return image_samples(found.paths, source.parent), None
    return image_samples(found.paths, source.parent, [found.classes[i] for i in found.labels]), found.classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="image folder, file list (.txt) or video manifest (.jsonl/.csv)")
    parser.add_argument("output", type=Path, help="folder for the shards")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    samples, classes = _samples(args.source)
    shards = write_shards(samples, args.output, args.prefix, args.maxcount, args.maxsize, classes)
    last = len(shards) - 1
    print(f"wrote {len(shards)} shards to {args.output} in {time.perf_counter() - start:.1f} s; read them with "
          f"data.shards='{args.output}/{args.prefix}-{{000000..{last:06d}}}.tar'")


if __name__ == "__main__":
    main()
