"""``mmpretrain-shards``: turn a folder of images, a file list or a video manifest into WebDataset shards.

    mmpretrain-shards images/ shards/ --maxcount 1000            # a folder (recursive)
    mmpretrain-shards list.txt shards/                           # path or path<TAB>label per line
    mmpretrain-shards videos.jsonl shards/ --prefix videos       # a video manifest (video2dataset layout)
    python -m mmpretrain.make_shards images/ shards/             # the same without the console script

Writes ``OUTPUT/{prefix}-NNNNNN.tar`` and ``OUTPUT/shards.json`` (sample counts, so readers need not count, and the
class and tag lists of labelled sources: a folder with one subfolder per class keeps its class order, the one
evaluation reads), and prints the shard pattern as arguments to paste into a shell: ``'data.shards="…"'`` for
training and ``'input="…"'`` for extraction. Media bytes are copied, never re-encoded. Write a train and a val split
into one folder with two prefixes (``--prefix train`` / ``val``); a folder already holding shards with the prefix is
refused unless ``--overwrite``. Sample keys and their rules: :func:`mmpretrain.data.shard_writer.image_samples`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mmpretrain import __version__
from mmpretrain.data.shard_writer import image_samples, write_shards
from mmpretrain.data.sources import labeled_folder, read_file_list, scan_images
from mmpretrain.errors import MMPretrainError


def source_samples(source: Path) -> tuple[Iterator[dict[str, Any]], list[str] | None]:
    """The samples of a folder, file list or video manifest, and the class list (None: sorted labels seen, or no
    labels)."""
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


def hydra_argument(key: str, value: str) -> str:
    """``key="value"`` quoted for Hydra (braces, commas and spaces stay inside a string) and then for the shell.

    Example:
        >>> print(hydra_argument("data.shards", "/d/shard-{000000..000002}.tar"))
        'data.shards="/d/shard-{000000..000002}.tar"'
    """
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    return shlex.quote(f'{key}="{quoted}"')


def shard_pattern(output: Path, prefix: str, count: int) -> str:
    """The brace pattern naming ``count`` shards of ``prefix`` (a single shard: its file name)."""
    last = count - 1
    return str(output / (f"{prefix}-{{000000..{last:06d}}}.tar" if last else f"{prefix}-000000.tar"))


def parser() -> argparse.ArgumentParser:
    """The command line of ``mmpretrain-shards`` (also what the documentation test checks its examples against)."""
    parser = argparse.ArgumentParser(prog="mmpretrain-shards", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="image folder, file list (.txt) or video manifest (.jsonl/.csv)")
    parser.add_argument("output", type=Path, help="folder for the shards")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard")
    parser.add_argument("--overwrite", action="store_true", help="replace shards with this prefix in OUTPUT")
    parser.add_argument("--version", action="version", version=f"mmpretrain-shards {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry of ``mmpretrain-shards``: one line per result, a short error line and exit 1 on bad input."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        samples, classes = source_samples(args.source)
        shards = write_shards(samples, args.output, args.prefix, args.maxcount, args.maxsize, classes,
                              overwrite=args.overwrite)
    except MMPretrainError as err:
        print(f"mmpretrain-shards: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    pattern = shard_pattern(args.output, args.prefix, len(shards))
    print(f"wrote {len(shards)} shards to {args.output} in {time.perf_counter() - start:.1f} s; read them with")
    print(f"  mmpretrain-train ... {hydra_argument('data.shards', pattern)}")
    print(f"  mmpretrain-extract ... {hydra_argument('input', pattern)}")


if __name__ == "__main__":
    main()
