"""WebDataset shards: writing, reading, the per-epoch split over ranks and workers, bad samples, training MoBY and
the video model from shards, and extraction from shards on 1 and 2 processes."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import compose_cfg, tiny_overrides, video_overrides
from PIL import Image
from torch.utils.data import default_collate

from mmpretrain.data.shards import (
    INDEX_FILE,
    ImageShardDecoder,
    SampleError,
    ShardDataset,
    deal_shards,
    expand_shards,
    image_samples,
    read_shard,
    sample_image,
    shard_counts,
    shard_loader,
    write_shards,
)
from mmpretrain.data.sources import scan_images
from mmpretrain.video.io.decoding import VideoDecodeError, decode_clip
from mmpretrain.video.io.shards import manifest_samples


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _numbered_shards(folder: Path, counts: list[int], with_index: bool = True) -> str:
    """Shards of tiny images whose key is the global sample number; returns the brace pattern."""
    n = 0
    for s, count in enumerate(counts):
        samples = []
        for _ in range(count):
            samples.append({"__key__": f"s{n:04d}", "png": _png(n % 256), "cls": str(n)})
            n += 1
        write_shards(iter(samples), folder, prefix=f"part{s:02d}", maxcount=10_000)
    if not with_index:
        (folder / INDEX_FILE).unlink()
    return str(folder / f"part{{00..{len(counts) - 1:02d}}}-000000.tar")


def _keys(raw: dict) -> dict:
    return {"value": int(raw["cls"])}


@pytest.fixture(scope="module")
def image_shards(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("image_shards")
    found = scan_images(demo_root / "train")
    labels = [Path(p).parent.name for p in found.paths]
    paths = write_shards(image_samples(found.paths, demo_root / "train", labels), out, maxcount=12)
    assert len(paths) == 4
    return str(out / "shard-{000000..000003}.tar")


# ---------------------------------------------------------------- reading


def test_written_shards_read_back_in_order_with_counts(image_shards: str, demo_root: Path) -> None:
    urls = expand_shards(image_shards)
    assert [Path(u).name for u in urls] == [f"shard-{i:06d}.tar" for i in range(4)]
    assert shard_counts(urls) == [12, 12, 12, 12]
    first = list(read_shard(urls[0]))
    assert first[0]["__key__"] == "circle__00000"
    assert json.loads(first[0]["json"]) == {"path": "circle/00000.png", "label": "circle"}
    assert first[0]["png"] == (demo_root / "train/circle/00000.png").read_bytes()


def test_counts_without_an_index_are_read_from_the_shards(tmp_path: Path) -> None:
    pattern = _numbered_shards(tmp_path, [3, 5], with_index=False)
    assert shard_counts(expand_shards(pattern)) == [3, 5]


def test_missing_shards_are_named(tmp_path: Path) -> None:
    pattern = _numbered_shards(tmp_path, [2])
    with pytest.raises(FileNotFoundError, match=r"data\.shards=.*1 of 2 shards do not exist.*part01-000000\.tar"):
        expand_shards(pattern.replace("{00..00}", "{00..01}"))


def test_bytes_decode_like_the_file(video_demo: dict[str, Path]) -> None:
    from mmpretrain.video.io.manifest import read_video_manifest

    video = read_video_manifest(video_demo["train"])[0].video
    data = Path(video).read_bytes()

    def pick(times: np.ndarray) -> np.ndarray:
        return np.array([0, 3, len(times) - 1])

    for backend in ("decord", "pyav"):
        a, ia = decode_clip(video, pick, size=(16, 16), backend=backend)
        b, ib = decode_clip(data, pick, size=(16, 16), backend=backend, name="x/k.mp4")
        np.testing.assert_array_equal(a, b)
        assert ia.tolist() == ib.tolist()
    with pytest.raises(VideoDecodeError) as info:
        decode_clip(data[: len(data) // 2], lambda t: np.arange(len(t)), name="shard-000000.tar/k.mp4")
    assert info.value.reason == "truncated" and info.value.path == "shard-000000.tar/k.mp4"
    with pytest.raises(VideoDecodeError, match="empty"):
        decode_clip(b"", lambda t: np.arange(len(t)), name="k.mp4")


# ---------------------------------------------------------------- epochs, ranks, workers


def test_deal_shards_reshuffles_per_epoch_balances_and_keeps_order_for_evaluation() -> None:
    counts = [10] * 7 + [3]
    a0, a0_again, a1 = (deal_shards(counts, 4, 7, e, True) for e in (0, 0, 1))
    assert a0 == a0_again and a0 != a1
    assert sorted(i for slot in a0 for i in slot) == list(range(8))
    loads = [sorted(sum(counts[i] for i in slot) for slot in a) for a in (a0, a1)]
    assert loads[0] == loads[1] == [13, 20, 20, 20]  # the same epoch length every epoch
    assert deal_shards(counts, 4, 7, 3, False) == [[0, 4], [1, 5], [2, 6], [3, 7]]


def _epoch_keys(dataset: ShardDataset, num_workers: int) -> list[tuple[int, bool]]:
    loader = shard_loader(dataset, dataset.batch_size, pin_memory=False)
    assert len(loader) == len(dataset) // dataset.batch_size
    out = []
    for batch in loader:
        out += list(zip(batch["value"].tolist(), batch["padded"].tolist()))
    return out


def test_uneven_shards_are_padded_so_every_slot_has_the_same_length(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    pattern = _numbered_shards(tmp_path, [5, 3, 4, 2])
    urls = expand_shards(pattern)
    ds = ShardDataset(urls, shard_counts(urls), _keys, batch_size=2, num_workers=2, seed=0, shuffle_buffer=4)
    seen = _epoch_keys(ds, 2)
    longest = max(sum([5, 3, 4, 2][i] for i in slot) for slot in deal_shards([5, 3, 4, 2], 2, 0, 0, True))
    assert longest == 7
    assert len(seen) == len(ds) == 2 * (-(-longest // 2) * 2)
    real = [v for v, padded in seen if not padded]
    assert sorted(real) == list(range(14))  # every sample once; only the padding repeats
    assert ds.padded_samples() == len(seen) - len(real) == 2  # what the epoch's log line says
    with caplog.at_level(logging.INFO, logger="mmpretrain"):
        ds.set_epoch(1)
    assert "shards epoch 1: 2 padded samples on rank 0" in caplog.text
    assert [v for v, p in _epoch_keys(ds, 2) if not p] != real  # another epoch, another order


def test_loader_epoch_comes_from_lightnings_sampler_hook(tmp_path: Path) -> None:
    urls = expand_shards(_numbered_shards(tmp_path, [4, 4]))
    ds = ShardDataset(urls, [4, 4], _keys, batch_size=2)
    loader = shard_loader(ds, 2, pin_memory=False)
    from lightning_fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, 5)
    assert ds.epoch == 5


def test_too_few_shards_for_the_workers_is_an_error(tmp_path: Path) -> None:
    urls = expand_shards(_numbered_shards(tmp_path, [4]))
    with pytest.raises(ValueError, match=r"1 shards for 2 processes x 1 dataloader workers"):
        ShardDataset(urls, [4], _keys, batch_size=1, world=2)


def _ddp_epoch(rank: int, world: int, pattern: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    urls = expand_shards(pattern)
    ds = ShardDataset(urls, shard_counts(urls), _keys, batch_size=3, world=world, rank=rank, num_workers=2, seed=3)
    ds.set_epoch(2)
    seen = _epoch_keys(ds, 2)
    everything: list = [None] * world
    dist.all_gather_object(everything, seen)
    if rank == 0:
        Path(out).write_text(json.dumps(everything))
    dist.destroy_process_group()


def test_two_gloo_processes_see_every_sample_once_in_an_exact_split(tmp_path: Path) -> None:
    pattern = _numbered_shards(tmp_path, [6] * 8)  # 8 shards of 6 for 2 ranks x 2 workers, batch 3: exact
    out = tmp_path / "seen.json"
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_epoch, args=(2, pattern, port, str(out)), nprocs=2, join=True)
    per_rank = json.loads(out.read_text())
    assert len(per_rank[0]) == len(per_rank[1]) == 24
    values = [v for rank in per_rank for v, padded in rank]
    assert not any(padded for rank in per_rank for _, padded in rank)
    assert sorted(values) == list(range(48))


# ---------------------------------------------------------------- bad samples


def _bad_shard(folder: Path) -> str:
    """One shard with every kind of bad sample among good ones, and a second one cut off mid-member."""
    good = [{"__key__": f"g{i}", "png": _png(i), "cls": str(i)} for i in range(6)]
    bad = [
        {"__key__": "undecodable", "png": b"not a png at all"},
        {"__key__": "no_image", "txt": "a caption without its image"},
        {"__key__": "bad_json", "png": _png(9), "json": b"{not json"},
    ]
    write_shards(iter(good[:3] + bad + good[3:]), folder, prefix="bad", maxcount=100)
    write_shards(iter({"__key__": f"t{i}", "png": _png(i), "cls": "1"} for i in range(8)), folder, prefix="cut")
    data = (folder / "cut-000000.tar").read_bytes()
    (folder / "cut-000000.tar").write_bytes(data[: len(data) * 2 // 3])
    return f"{folder}/cut-000000.tar {folder}/bad-000000.tar"


def test_bad_samples_are_skipped_and_counted_per_reason(tmp_path: Path, caplog) -> None:
    from mmpretrain.data.shards import sample_json

    spec = _bad_shard(tmp_path)
    urls = expand_shards(spec)

    def decode(raw: dict) -> dict:
        sample_json(raw)
        return ImageShardDecoder(lambda img: torch.zeros(1))(raw)

    ds = ShardDataset(urls, [8, 9], decode, batch_size=1, train=False, pad=False)
    with caplog.at_level(logging.WARNING):
        samples = list(ds)
    reasons = Counter(r for s in samples for r in filter(None, s["failed_reasons"].split(",")))
    assert reasons == {"undecodable_image": 1, "missing_image": 1, "corrupt_member": 1, "truncated_shard": 1}
    assert sum(s["failed"] for s in samples) == 4
    assert "cut-000000.tar is truncated" in caplog.text
    assert [s["key"] for s in samples] == [f"t{i}" for i in range(6)] + [f"g{i}" for i in range(6)]
    assert samples[6]["failed_reasons"] == "truncated_shard"  # carried by the next good sample


def test_a_corrupt_member_header_is_reported(tmp_path: Path, caplog) -> None:
    write_shards(iter({"__key__": f"k{i}", "txt": "x" * 3000} for i in range(40)), tmp_path, prefix="hdr")
    path = tmp_path / "hdr-000000.tar"
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[3].offset
    data = bytearray(path.read_bytes())
    data[offset + 100 : offset + 110] = b"X" * 10  # the mode field: the header checksum no longer matches
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        samples = list(read_shard(str(path)))
    assert samples[-1].reason == "corrupt_member" and len(samples) == 4
    assert "hdr-000000.tar has a corrupt member header" in caplog.text


def test_labels_missing_or_unknown_are_bad_samples() -> None:
    decoder = ImageShardDecoder(lambda img: torch.zeros(1), labels={"cat": 0})
    with pytest.raises(SampleError, match="missing_label"):
        decoder({"__key__": "a", "png": _png(1)})
    with pytest.raises(SampleError, match="unknown_label"):
        decoder({"__key__": "a", "png": _png(1), "json": b'{"label": "dog"}'})
    assert decoder({"__key__": "a", "png": _png(1), "json": b'{"label": "cat"}'})["label"] == 0
    with pytest.raises(SampleError, match="corrupt_member"):
        decoder({"__key__": "a", "png": _png(1), "cls": b"cat"})


# ---------------------------------------------------------------- training


def test_moby_trains_from_shards(image_shards: str, demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), f"data.shards='{image_shards}'", "data.root=null",
                                     "trainer.max_epochs=2", "data.num_workers=0"], tmp_path)
    metrics, objects = train(cfg)
    assert torch.isfinite(metrics["train/loss"])
    assert objects["trainer"].global_step == 2 * 48 // 8
    assert "val/knn_top1" in metrics


def test_moby_aborts_past_the_failure_rate_on_bad_shards(demo_root: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train

    spec = _bad_shard(tmp_path / "shards")
    good = [{"__key__": f"x{i}", "png": _png(i)} for i in range(16)]
    write_shards(iter(good), tmp_path / "shards", prefix="good")
    spec = f"{spec} {tmp_path}/shards/good-000000.tar"
    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root), f"data.shards='{spec}'",
                                     "trainer.max_epochs=1", "data.min_attempts=4", "data.max_failure_rate=0.05",
                                     "data.knn_train_root=null", "data.knn_val_root=null"], tmp_path)
    with pytest.raises(RuntimeError, match=r"missing_image: 1.*above data\.max_failure_rate"):
        train(cfg)


def test_video_model_trains_from_shards(video_shards: dict[str, str], video_demo, tmp_path: Path) -> None:
    from mmpretrain.cli.train import train

    sample = next(read_shard(video_shards["val"]))
    assert {"mp4", "txt", "json"} <= set(sample) or {"avi", "txt", "json"} <= set(sample)
    cfg = compose_cfg("train.yaml", [*video_overrides(video_demo), f"data.shards='{video_shards['train']}'",
                                     f"data.val_shards={video_shards['val']}", "trainer.max_epochs=1",
                                     "data.max_failure_rate=0.2"], tmp_path)
    metrics, objects = train(cfg)
    assert torch.isfinite(metrics["train/loss"])
    assert objects["trainer"].global_step == 18 // 4
    health = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "DataHealthMonitor")
    from mmpretrain.video.io.manifest import read_video_manifest

    untitled = sum(not r.title for r in read_video_manifest(video_demo["train"]))
    assert untitled and set(health.reasons) == {"missing_caption"} and health.reasons["missing_caption"] >= untitled


def test_video_shard_bad_samples(video_demo, tmp_path: Path) -> None:
    from mmpretrain.video.io.dataset import ClipReader, SampleVocab
    from mmpretrain.video.io.shards import VideoShardDecoder

    good = list(manifest_samples(video_demo["val"]))[:2]
    ext = next(k for k in good[0] if k in ("mp4", "avi"))
    no_caption = {k: v for k, v in good[0].items() if k != "txt"} | {"__key__": "nocap", "json": "{}"}
    cut = {**good[1], "__key__": "cut", ext: good[1][ext][: len(good[1][ext]) // 2]}
    garbage = {**good[1], "__key__": "garbage", ext: b"\0" * 100}
    write_shards(iter([no_caption, cut, garbage, *good]), tmp_path, prefix="v")
    decoder = VideoShardDecoder(ClipReader(num_frames=2, size=(16, 16), train=False), SampleVocab())
    ds = ShardDataset([str(tmp_path / "v-000000.tar")], [5], decoder, batch_size=1, train=False, pad=False)
    samples = list(ds)
    assert [s["id"] for s in samples] == [g["__key__"] for g in good]
    assert samples[0]["failed_reasons"].split(",") == ["missing_caption", "truncated", "unreadable"]
    assert samples[0]["frames"].shape == (2, 3, 16, 16)


# ---------------------------------------------------------------- extraction


def _extract_overrides(encoder: Path, source: str, output: Path, trainer: str = "cpu") -> list[str]:
    return [f"encoder={encoder}", f"input='{source}'", f"output={output}", f"trainer={trainer}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "num_workers=0",
            "batch_size=5"]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_encoders import training_checkpoint

    from mmpretrain import hub

    root = tmp_path_factory.mktemp("model")
    hub.publish(training_checkpoint(root / "train.ckpt"), root / "published", name="tiny_moby")
    return root / "published"


def test_extract_from_shards_every_sample_once_in_shard_order(
    published: Path, image_shards: str, demo_root: Path, tmp_path: Path
) -> None:
    from mmpretrain.cli.extract import extract
    from mmpretrain.embeddings import open_store
    from mmpretrain.encoders import load_encoder

    summary = extract(compose_cfg("extract.yaml", _extract_overrides(published, image_shards, tmp_path / "s"),
                                  tmp_path))
    assert summary["count"] == 48 and summary["shards"] == 4 and summary["failed"] == 0
    store = open_store(tmp_path / "s")
    meta = store.metadata().to_pydict()
    keys = [s["__key__"] for u in expand_shards(image_shards) for s in read_shard(u)]
    assert meta["id"] == keys
    assert meta["label"] == [k.split("__")[0] for k in keys]
    encoder = load_encoder(published, device="cpu")
    files = [demo_root / "train" / (k.replace("__", "/") + ".png") for k in keys]
    np.testing.assert_allclose(store.embeddings(), encoder.encode_images(files), atol=1e-5)

    # resuming per shard: a removed shard is redone, the others are kept as they are
    kept = (tmp_path / "s/embeddings-00000.npy").stat().st_mtime_ns
    (tmp_path / "s/embeddings-00002.npy").unlink()
    extract(compose_cfg("extract.yaml", _extract_overrides(published, image_shards, tmp_path / "s"), tmp_path))
    assert (tmp_path / "s/embeddings-00000.npy").stat().st_mtime_ns == kept
    np.testing.assert_allclose(open_store(tmp_path / "s").embeddings(), store.embeddings(), atol=1e-6)


def test_extract_from_bad_shards_lists_failures(published: Path, tmp_path: Path) -> None:
    from mmpretrain.cli.extract import extract
    from mmpretrain.embeddings import open_store

    spec = _bad_shard(tmp_path / "shards")
    overrides = [*_extract_overrides(published, spec, tmp_path / "s"), "max_failure_rate=0.5"]
    summary = extract(compose_cfg("extract.yaml", overrides, tmp_path))
    failed = [json.loads(line) for line in (tmp_path / "s/failed.jsonl").read_text().splitlines()]
    assert {f["id"] for f in failed} == {"undecodable", "no_image", "bad_json", None}
    assert any("truncated_shard" in f["error"] and f["path"].endswith("cut-000000.tar") for f in failed)
    store = open_store(tmp_path / "s")
    assert store.metadata().to_pydict()["id"] == [f"t{i}" for i in range(6)] + [f"g{i}" for i in range(6)]
    # 3 failed samples and the 2 the cut shard lost after its damage (shards.json counts 8, 6 were read)
    assert summary["failed"] == 5 and [f["missing"] for f in failed if f["id"] is None] == [2]
    overrides = [*_extract_overrides(published, spec, tmp_path / "s2"), "max_failure_rate=0.1"]
    with pytest.raises(RuntimeError, match=r"5 of 17 samples failed"):
        extract(compose_cfg("extract.yaml", overrides, tmp_path))


@pytest.mark.slow
def test_extract_from_shards_on_two_processes_matches_one(
    published: Path, image_shards: str, tmp_path: Path
) -> None:
    from mmpretrain.cli.extract import extract
    from mmpretrain.embeddings import open_store

    extract(compose_cfg("extract.yaml", _extract_overrides(published, image_shards, tmp_path / "one"), tmp_path))
    overrides = _extract_overrides(published, image_shards, tmp_path / "two", trainer="ddp_sim")
    summary = extract(compose_cfg("extract.yaml", overrides, tmp_path))
    assert summary["count"] == 48
    one, two = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    np.testing.assert_array_equal(one.ids(), two.ids())
    np.testing.assert_allclose(one.embeddings(), two.embeddings(), atol=1e-5)


def test_extract_video_shards_matches_the_manifest(video_pretrained: Path, video_shards: dict[str, str],
                                                   video_demo, tmp_path: Path) -> None:
    """Video bytes from shards embed like the files of the manifest they were made from (same ids, same rows)."""
    from mmpretrain.cli.extract import extract
    from mmpretrain.embeddings import open_store

    for name, source in (("shards", video_shards["val"]), ("manifest", str(video_demo["val"]))):
        extract(compose_cfg("extract.yaml", [*_extract_overrides(video_pretrained, source, tmp_path / name),
                                             "embedding=fused"], tmp_path))
    shards, manifest = open_store(tmp_path / "shards"), open_store(tmp_path / "manifest")
    np.testing.assert_array_equal(shards.ids(), manifest.ids())
    assert shards.metadata().to_pydict()["title"] == manifest.metadata().to_pydict()["title"]
    np.testing.assert_allclose(shards.embeddings(), manifest.embeddings(), atol=1e-5)


def test_evaluation_reads_every_sample_once_across_workers(tmp_path: Path) -> None:
    """Unpadded (validation) loaders have no length, so Lightning reads them to the end: no partial batch is cut."""
    urls = expand_shards(_numbered_shards(tmp_path, [5, 3, 4]))
    ds = ShardDataset(urls, [5, 3, 4], _keys, batch_size=2, num_workers=2, train=False, pad=False)
    with pytest.raises(TypeError):
        len(ds)
    loader = shard_loader(ds, 2, pin_memory=False)
    values = [v for batch in loader for v in batch["value"].tolist()]
    assert sorted(values) == list(range(12))


@pytest.mark.slow
def test_moby_trains_from_shards_on_two_processes(image_shards: str, demo_root: Path, tmp_path: Path) -> None:
    """ddp_spawn with 2 CPU processes: each rank gets its own shards, the epoch reaches the workers, steps agree."""
    from mmpretrain.cli.train import train

    cfg = compose_cfg("train.yaml", [*tiny_overrides(demo_root, batch_size=4), f"data.shards='{image_shards}'",
                                     "trainer=ddp_sim", "trainer.max_epochs=2", "data.knn_train_root=null",
                                     "data.knn_val_root=null"], tmp_path)
    metrics, _ = train(cfg)
    assert torch.isfinite(metrics["train/loss"])
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()


def test_pipe_urls_are_read_through_webdataset(tmp_path: Path) -> None:
    """`pipe:` commands (how S3 shards are read: `pipe:aws s3 cp s3://... -`) stream through webdataset's gopen."""
    _numbered_shards(tmp_path, [3, 2])
    urls = expand_shards([f"pipe:cat {tmp_path}/part00-000000.tar", f"pipe:cat {tmp_path}/part01-000000.tar"])
    assert shard_counts(urls) == [3, 2]  # no shards.json for a command: counted by reading
    ds = ShardDataset(urls, [3, 2], _keys, batch_size=1, train=False, pad=False)
    assert [s["value"] for s in ds] == [0, 1, 2, 3, 4]
    assert [s["__key__"] for s in read_shard(urls[1])] == ["s0003", "s0004"]


def test_max_pixels_refuses_oversized_shard_images_as_it_refuses_files(tmp_path: Path) -> None:
    """data.max_pixels applies to images decoded from shards, counted under the reason a file gets."""
    from mmpretrain.data import DataHealthMonitor, ImageDataset, SSLImageDataModule

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(big)  # 6400 pixels
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(small)  # 1600 pixels
    files = ImageDataset([str(big), str(small)], lambda img: torch.zeros(1), max_pixels=5000)
    from_file = files[0]
    files_batch = default_collate([from_file])
    assert from_file["index"] == 1 and from_file["failed"] == 1 and from_file["failed_reasons"] == "too_many_pixels"

    samples = [{"__key__": "big", "png": big.read_bytes()}, {"__key__": "small", "png": small.read_bytes()}]
    write_shards(iter(samples), tmp_path / "shards")
    url = str(tmp_path / "shards/shard-000000.tar")
    with pytest.raises(SampleError, match="too_many_pixels"):
        sample_image(next(read_shard(url)), max_pixels=5000)
    assert sample_image(next(read_shard(url))).size == (80, 80)  # the default cap lets it through
    datamodule = SSLImageDataModule(shards=url, image_size=16, batch_size=1, num_workers=0, max_pixels=5000,
                                    grayscale=False, pin_memory=False)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert [b["key"] for b in batches] == [["small"], ["small"]]  # the epoch is padded with the good sample
    monitor = DataHealthMonitor(max_failure_rate=1.0)
    for batch in [files_batch, *batches]:
        monitor._count(mock.MagicMock(), batch)
    # the file and each read of the shard's big image (the padding pass reads it again), under one reason
    assert set(monitor.reasons) == {"too_many_pixels"} and monitor.failed == monitor.reasons["too_many_pixels"] >= 2



@pytest.fixture
def http_shards(image_shards: str, tmp_path: Path):
    """Two of the image shards served as http://127.0.0.1:<port>/{000000..000001}.tar by a local threaded server."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    local = expand_shards(image_shards)[:2]
    for i, url in enumerate(local):
        (served / f"{i:06d}.tar").write_bytes(Path(url).read_bytes())

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", local
    server.shutdown()
    server.server_close()


def test_http_shards_are_read_and_extracted(http_shards, published: Path, tmp_path: Path) -> None:
    """https:// and http:// shard URLs stream through webdataset's gopen (curl): every sample, in shard order."""
    from mmpretrain.cli.extract import extract
    from mmpretrain.embeddings import open_store

    base, local = http_shards
    pattern = f"{base}/{{000000..000001}}.tar"
    urls = expand_shards(pattern)
    assert urls == [f"{base}/000000.tar", f"{base}/000001.tar"]
    keys = [s["__key__"] for u in local for s in read_shard(u)]
    assert shard_counts(urls) == [12, 12]  # no shards.json for remote shards: counted by reading them
    ds = ShardDataset(urls, [12, 12], lambda raw: {"png": len(raw["png"])}, batch_size=1, train=False, pad=False)
    assert [s["key"] for s in ds] == keys
    summary = extract(compose_cfg("extract.yaml", _extract_overrides(published, pattern, tmp_path / "s"), tmp_path))
    assert summary["count"] == 24 and summary["failed"] == 0 and summary["shards"] == 2
    assert open_store(tmp_path / "s").metadata().to_pydict()["id"] == keys
    missing = list(read_shard(f"{base}/000009.tar"))  # a 404: curl fails, the shard is reported, nothing is read
    assert len(missing) == 1 and missing[0].reason == "truncated_shard"
