"""WebDataset tar shards (what img2dataset and video2dataset write) as training and extraction input.

A shard is a tar file whose members are grouped into samples by key: ``{key}.jpg`` + ``{key}.json`` ... Shards are
named by a brace pattern or a list of URLs (local paths, ``https://``, ``pipe:aws s3 cp s3://b/x.tar -``) and read
by `read_shard` (:mod:`mmpretrain.data.shard_samples`: member size limit, stall deadline for ``http(s)://``, the
`ShardError` marker); ``webdataset`` opens the other streams.

What "one epoch" means with N ranks, W dataloader workers and uneven shards (an exact split with padding):
each epoch the shard list is permuted with a generator seeded by (run seed, epoch) and dealt to the N x W
(rank, worker) slots, largest shards first to the least-loaded slot (`deal_shards`). A slot reads its shards in
permutation order through a seeded shuffle buffer. Every slot yields the same number of samples, ``L`` = the
largest slot's sample count rounded up to a multiple of the batch size (the same every epoch): a slot that runs
out re-reads its own shards from the start, and those repeats are marked ``padded``. So every sample is seen once
per epoch, each rank takes the same number of steps (DDP never waits on a rank that ran dry), and only the padding
repeats; when the shards split evenly (equal slot loads that are a multiple of the batch) nothing repeats at all.
The sample counts come from ``shards.json`` next to the shards
(``mmpretrain-shards`` writes it; validated by :mod:`mmpretrain.data.shard_index`) or, failing that, from one
read-through at start-up. Each pass over a shard is checked against its count: a stale ``shards.json`` fails the run
naming the shard and both numbers (``MMPRETRAIN_SHARD_COUNT_CHECK=warn`` only warns).

``shards.json`` holds ``counts`` (samples per shard file) and the vocabularies of labelled shards: ``classes`` (the
class names, index = class id; a ``.cls`` integer is an index into it) and ``tags`` (sorted). Labelled readers take
them from there, or collect them by reading the shards once (`shard_vocabulary`).

A resumed run restarts at the start of its epoch: Lightning calls ``set_epoch`` with the restored epoch, and the
permutation and every shuffle depend only on (seed, epoch, slot).

Bad samples never stop a shard: a sample that does not decode, lacks its media or caption, or has a member that
does not parse is skipped, and the next sample carries ``failed`` and ``failed_reasons`` for `DataHealthMonitor`.
A shard that ends early (cut off, stalled, or a member header that does not parse) is named in a warning and counted
as ``truncated_shard`` or ``corrupt_member``; the samples before the damage are kept. A member above the size limit
is never read and counts as ``member_too_large``.
"""

from __future__ import annotations

import io
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmpretrain.data.dataset import DEFAULT_MAX_PIXELS, failure_reason, load_rgb, transform_file
from mmpretrain.data.shard_index import INDEX_FILE, read_index, shard_name
from mmpretrain.data.shard_samples import (
    SHARD_REASONS,
    SampleError,
    ShardError,
    class_names,
    is_shard_error,
    read_shard,
    sample_json,
    sample_label,
    vocabulary_of,
)
from mmpretrain.data.shard_writer import image_samples, write_shards
from mmpretrain.errors import ConfigError, MissingPathError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_KEYS", "INDEX_FILE", "SHARD_REASONS", "ImageShardDecoder", "SampleError", "ShardDataset", "ShardError",
    "class_index", "class_names", "count_samples", "deal_shards", "expand_shards", "image_samples", "is_shard_error",
    "read_index", "read_shard", "sample_image", "sample_json", "sample_label", "shard_counts", "shard_loader",
    "shard_name", "shard_vocabulary", "write_shards",
]
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "ais://")


def _is_local(url: str) -> bool:
    return not url.startswith(_REMOTE_PREFIXES)


def expand_shards(spec: str | Sequence[str], key: str = "data.shards") -> list[str]:
    """URLs of a brace pattern (``/d/{000000..000099}.tar``), a space-separated string or a list; local shards
    must exist, so a typo fails at start-up with the missing file rather than as an empty epoch.

    Raises:
        ConfigError: the spec names no shard, or one shard twice. MissingPathError: a local shard does not exist.
    """
    if isinstance(spec, str):
        urls = wds.shardlists.expand_urls(spec) if spec.startswith("pipe:") else [
            u for part in spec.split() for u in wds.shardlists.expand_urls(part)
        ]
    else:
        urls = [u for part in spec for u in wds.shardlists.expand_urls(str(part))]
    if not urls:
        raise ConfigError(f"{key}={spec!r}: names no shards")
    missing = [u for u in urls if _is_local(u) and not os.path.isfile(u)]
    if missing:
        raise MissingPathError(f"{key}={spec!r}: {len(missing)} of {len(urls)} shards do not exist (first: "
                                f"{missing[0]})")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{key}={spec!r}: a shard is named twice")
    return urls


def count_samples(url: str) -> int:
    """Samples in a shard, by reading it through (for shards without a ``shards.json`` entry)."""
    return sum(1 for s in read_shard(url) if not isinstance(s, ShardError) or not s.ends_shard)


def _local_indexes(urls: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``shards.json`` of each local shard's folder, by URL (remote shards have none)."""
    folders: dict[str, dict[str, Any]] = {}
    found = {}
    for url in urls:
        if _is_local(url):
            folder = str(Path(url).parent)
            if folder not in folders:
                folders[folder] = read_index(folder)
            found[url] = folders[folder]
    return found


def shard_counts(urls: Sequence[str]) -> list[int]:
    """Sample count of each shard: from ``shards.json`` beside local shards, else by reading the shard."""
    indexes = _local_indexes(urls)
    counts, read = [], 0
    for url in urls:
        count = indexes[url]["counts"].get(shard_name(url)) if url in indexes else None
        if count is None:
            count, read = count_samples(url), read + 1
        counts.append(int(count))
    if read:
        log.info("counted the samples of %d shards by reading them (write %s with mmpretrain-shards to skip "
                 "this)", read, INDEX_FILE)
    return counts


def shard_vocabulary(urls: Sequence[str], key: str = "data.shards") -> dict[str, list[str]]:
    """``{"classes": [...], "tags": [...]}`` of labelled shards, for class ids and multi-hot tags.

    From ``shards.json`` beside local shards (`write_shards` records both); shards without it (remote, or written by
    another tool) are read once for their ``.cls`` / ``.json`` ``label`` and ``tags``. Several folders: the union
    (sorted, like a manifest's label list), unless they all give the same list.
    """
    indexes = _local_indexes(urls)
    lists = {"classes": [], "tags": []}
    unlisted = [url for url in urls if url not in indexes or "classes" not in indexes[url]]
    for field in lists:
        seen = []
        for url in urls:
            if url in indexes and field in indexes[url] and indexes[url][field] not in seen:
                seen.append(indexes[url][field])
        lists[field] = seen[0] if len(seen) == 1 else sorted({x for names in seen for x in names})
    if unlisted:
        log.info("reading %d shards for their labels and tags (%s has no class list)", len(unlisted), INDEX_FILE)
        labels, tags = vocabulary_of(s for url in unlisted for s in read_shard(url))
        where = f"{key}={unlisted[0]}" if len(unlisted) == 1 else f"{key} ({len(unlisted)} shards)"
        names = class_names(labels, where)
        if not lists["classes"]:
            lists["classes"] = names
        elif not set(names) <= set(lists["classes"]):
            lists["classes"] = sorted(set(lists["classes"]) | set(names))
        lists["tags"] = sorted(set(lists["tags"]) | tags)
    return lists


def deal_shards(counts: Sequence[int], slots: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Shard indices of each slot.

    Training: a (seed, epoch)-seeded permutation, then the largest shards first to the least-loaded slot (ties by
    the permutation, then the lowest slot), each slot reading its shards in permutation order. The slot loads depend
    only on the counts, so every epoch has the same length, padding is small, and shards of equal size (all but the
    last, usually) change slots every epoch. Evaluation: round-robin in shard order.
    """
    if not shuffle:
        return [list(range(s, len(counts), slots)) for s in range(slots)]
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)).tolist()
    rank = {shard: position for position, shard in enumerate(order)}
    loads, dealt = [0] * slots, [[] for _ in range(slots)]
    for shard in sorted(order, key=lambda i: -counts[i]):
        slot = loads.index(min(loads))
        dealt[slot].append(shard)
        loads[slot] += counts[shard]
    return [sorted(shards, key=rank.__getitem__) for shards in dealt]


def _shuffled(samples: Iterator[dict[str, Any]], buffer: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A shuffle buffer: keeps ``buffer`` samples and yields a random one as each new one arrives."""
    pool: list[dict[str, Any]] = []
    for sample in samples:
        if len(pool) < buffer:
            pool.append(sample)
            continue
        at = rng.randrange(len(pool))
        pool[at], sample = sample, pool[at]
        yield sample
    rng.shuffle(pool)
    yield from pool


class ShardDataset(IterableDataset):
    """Decoded samples from WebDataset shards, split over ranks and workers as the module doc describes.

    Args:
        urls: the shards (`expand_shards`); counts: their sample counts (`shard_counts`).
        decode: raw sample -> output dict; raises `SampleError` for a bad sample.
        batch_size: each slot yields a multiple of it (with ``pad``).
        world / rank / num_workers: the slots; ``num_workers`` must be the DataLoader's.
        seed: base of the shard permutation and the shuffle buffers.
        train: shuffle (shards per epoch, samples through a buffer); evaluation keeps shard order.
        pad: fill every slot to the same length (training; evaluation yields each sample exactly once).
        shuffle_buffer: samples held by the shuffle buffer.
    """

    def __init__(
        self,
        urls: Sequence[str],
        counts: Sequence[int],
        decode: Callable[[dict[str, Any]], dict[str, Any]],
        batch_size: int,
        world: int = 1,
        rank: int = 0,
        num_workers: int = 0,
        seed: int = 0,
        train: bool = True,
        pad: bool = True,
        shuffle_buffer: int = 256,
        key: str = "data.shards",
    ) -> None:
        if len(urls) != len(counts):
            raise ValueError(f"{len(urls)} shards but {len(counts)} counts")
        self.urls, self.counts = list(urls), [int(c) for c in counts]
        self.decode = decode
        self.batch_size = batch_size
        self.world, self.rank = world, rank
        self.workers = max(1, num_workers)
        self.num_workers = num_workers
        self.seed = seed
        self.train, self.pad = train, pad
        self.shuffle_buffer = shuffle_buffer
        self.epoch = 0
        slots = world * self.workers
        if pad and len(self.urls) < slots:
            raise ConfigError(f"{key}: {len(self.urls)} shards for {world} processes x {self.workers} dataloader "
                              "workers; every worker needs a shard (write smaller shards or use fewer workers)")
        if pad and sum(self.counts) < batch_size * world:
            raise ConfigError(f"{key}: {sum(self.counts)} samples, fewer than one global batch "
                              f"(data.batch_size={batch_size} x {world} processes)")

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (Lightning calls it through the loader's sampler, see `shard_loader`); a decoder
        with per-epoch randomness of its own is told too."""
        self.epoch = int(epoch)
        if hasattr(self.decode, "set_epoch"):
            self.decode.set_epoch(epoch)
        padded = self.padded_samples()
        if padded:
            log.info("shards epoch %d: %d padded samples on rank %d (repeats, so every dataloader worker yields %d)",
                     self.epoch, padded, self.rank, self._slot_length())

    def padded_samples(self) -> int:
        """Samples this rank repeats this epoch so that its workers yield equal, whole-batch lengths (0 unpadded)."""
        if not self.pad:
            return 0
        mine = self._slots()[self.rank * self.workers:(self.rank + 1) * self.workers]
        return len(self) - sum(self.counts[i] for shards in mine for i in shards)

    def _slots(self) -> list[list[int]]:
        return deal_shards(self.counts, self.world * self.workers, self.seed, self.epoch, self.train)

    def _slot_length(self) -> int:
        longest = max(sum(self.counts[i] for i in shards) for shards in self._slots())
        return math.ceil(longest / self.batch_size) * self.batch_size

    def __len__(self) -> int:
        """Samples this rank yields in an epoch (the DataLoader divides by the batch size).

        Without padding (evaluation) the number of batches depends on how the workers' partial batches fall and on
        skipped samples, so there is no length: Lightning then reads the loader to its end instead of cutting it.
        """
        if not self.pad:
            raise TypeError("an unpadded ShardDataset has no fixed length")
        return self.workers * self._slot_length()

    def _raw(self, shards: list[int], rng: random.Random) -> Iterator[dict[str, Any] | ShardError]:
        for i in shards:
            samples = read_shard(self.urls[i], self.counts[i])
            yield from _shuffled(samples, self.shuffle_buffer, rng) if self.train else samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        if workers != self.workers:
            raise RuntimeError(f"ShardDataset was built for {self.workers} workers but runs in {workers}")
        slot = self.rank * self.workers + worker
        shards = self._slots()[slot]
        target = self._slot_length() if self.pad else None
        rng = random.Random(f"{self.seed}-{self.epoch}-{slot}")
        produced, passes, failed, reasons = 0, 0, 0, []
        while target is None or produced < target:
            good_this_pass = 0
            for raw in self._raw(shards, rng):
                if isinstance(raw, ShardError):
                    failed, reasons = failed + 1, [*reasons, raw.reason]
                    continue
                try:
                    out = self.decode(raw)
                except SampleError as err:
                    log.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), err)
                    failed, reasons = failed + 1, [*reasons, err.reason]
                    continue
                out.update(key=raw["__key__"], padded=passes > 0, failed=failed, failed_reasons=",".join(reasons))
                failed, reasons = 0, []
                good_this_pass += 1
                produced += 1
                yield out
                if target is not None and produced >= target:
                    return
            if target is None:
                return
            if good_this_pass == 0:
                raise RuntimeError(f"no sample of shards {[self.urls[i] for i in shards]} decodes (slot {slot}); "
                                   "see the warnings above")
            passes += 1


def shard_loader(
    dataset: ShardDataset, batch_size: int, pin_memory: bool, collate_fn: Callable | None = None
) -> DataLoader:
    """A DataLoader over a `ShardDataset` whose epoch Lightning sets.

    Lightning's fit loop calls ``set_epoch(epoch)`` on the loader's sampler every epoch (the restored epoch on
    resume); an iterable dataset's sampler is a placeholder, so it forwards the call to the dataset. Workers are not
    persistent, so each epoch's workers copy the dataset with its new epoch.
    """
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=dataset.pad,
        num_workers=dataset.num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        collate_fn=collate_fn,
    )
    loader.sampler.set_epoch = dataset.set_epoch
    return loader


# ----------------------------------------------------------------------------------------------- images


def _image_member(raw: dict[str, Any]) -> str:
    ext = next((e for e in IMAGE_KEYS if e in raw), None)
    if ext is None:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise SampleError("missing_image", f"{raw['__key__']} has no {'/'.join(IMAGE_KEYS)} member ({members})")
    return ext


def _image_error(raw: dict[str, Any], ext: str, err: Exception) -> SampleError:
    """A shard image that cannot be read, under the reason a file would get (`failure_reason`)."""
    return SampleError(failure_reason(err), f"{raw['__key__']}.{ext}: {type(err).__name__}: {err}")


def sample_image(raw: dict[str, Any], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The sample's image, fully decoded as RGB; raises `SampleError` when it has none, it has more than
    ``max_pixels`` (read from its header, as for files) or it does not decode."""
    ext = _image_member(raw)
    try:
        return load_rgb(io.BytesIO(raw[ext]), max_pixels)
    except Exception as err:  # PIL raises many exception types for bad bytes
        raise _image_error(raw, ext, err) from err


class ImageShardDecoder:
    """Raw shard sample -> the dict `ImageDataset` gives (``views`` or ``image``, optional ``label``); picklable.

    ``labels`` maps a class name to its index (a ``.cls`` integer is used as it is); ``max_pixels`` refuses larger
    images from their header (``data.max_pixels``, as for files: counted as ``too_many_pixels``).
    """

    def __init__(self, transform: Callable[[Image.Image], Any], labels: dict[str, int] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.transform = transform
        self.labels = labels
        self.max_pixels = max_pixels

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        ext = _image_member(raw)
        try:
            out = transform_file(io.BytesIO(raw[ext]), self.transform, self.max_pixels)
        except Exception as err:  # PIL raises many exception types for bad bytes
            raise _image_error(raw, ext, err) from err
        sample: dict[str, Any] = {"views": list(out)} if isinstance(out, tuple | list) else {"image": out}
        if self.labels is not None:
            sample["label"] = class_index(raw, self.labels)
        return sample


def class_index(raw: dict[str, Any], classes: dict[str, int]) -> int:
    """The sample's class id: its ``.cls`` integer (an index into the class list) or its ``.json`` ``label`` looked
    up in ``classes`` (name -> id); `SampleError` ``missing_label`` / ``unknown_label`` otherwise."""
    label = sample_label(raw)
    if label is None:
        raise SampleError("missing_label", f"{raw['__key__']} has no .cls nor a 'label' in its .json")
    if isinstance(label, int):
        if not 0 <= label < len(classes):
            raise SampleError("unknown_label", f"{raw['__key__']}.cls: class {label}, the list has {len(classes)}")
        return label
    if str(label) not in classes:
        raise SampleError("unknown_label", f"{raw['__key__']}: label {label!r} not in the class list")
    return classes[str(label)]
