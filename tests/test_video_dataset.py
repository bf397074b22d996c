"""VideoTextDataset (sampling, crops, failures and re-draws), frame shards, the demo video set and its scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmpretrain.video.demo import DEMO_COLOURS, DEMO_SHAPES, make_demo_videos
from mmpretrain.video.io.dataset import VideoTextDataset, collate_videos
from mmpretrain.video.io.decoding import VideoDecodeError, decode_clip
from mmpretrain.video.io.frames import FrameShards, prepare_frames
from mmpretrain.video.io.manifest import label_vocab, read_video_manifest, tag_vocab, write_video_manifest
from mmpretrain.video.io.sampling import make_sampler

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS, FRAMES, SIZE = 3, 12, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demo_videos")
    return make_demo_videos(root, per_class=PER_CLASS, num_frames=FRAMES, size=SIZE, val_fraction=0.34)


@pytest.fixture(scope="module")
def records(demo):
    return read_video_manifest(demo["train"]) + read_video_manifest(demo["val"])


def broken_records(records, tmp: Path) -> list:
    """Four bad files (missing, zero bytes, random bytes, cut in half) in place of the first four records."""
    good = Path(records[0].video).read_bytes()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp / "half.mp4").write_bytes(good[: len(good) // 2])
    paths = [tmp / "missing.mp4", tmp / "empty.mp4", tmp / "random.mp4", tmp / "half.mp4"]
    return [replace(r, video=str(p)) for r, p in zip(records, paths)] + list(records[4:])


# ---------------------------------------------------------------- demo set


def test_demo_videos_decode_and_carry_their_text(demo, records):
    train, val = read_video_manifest(demo["train"]), read_video_manifest(demo["val"])
    assert len(train) + len(val) == len(DEMO_SHAPES) * PER_CLASS and len(val) == len(DEMO_SHAPES)
    assert len({r.id for r in records}) == len(records)
    assert {Path(r.video).suffix for r in records} >= {".mp4"}
    assert label_vocab(records) == sorted(DEMO_SHAPES)
    for r in records:
        frames, _ = decode_clip(r.video, make_sampler(4, train=False, rng=None), backend="pyav")
        assert frames.shape == (4, SIZE, SIZE, 3) and frames.std() > 5
        colour, shape, moving = r.tags[:3]
        assert colour in DEMO_COLOURS and shape == r.label and moving.startswith("moving-")
        if r.title is not None:
            assert shape in r.title
        assert all(len(text.split()) == 2 and text.split()[1].isdigit() for text in r.ocr)


def test_demo_is_deterministic_and_mixes_containers(tmp_path):
    a = make_demo_videos(tmp_path / "a", per_class=8, num_frames=4, size=32, seed=3)
    b = make_demo_videos(tmp_path / "b", per_class=8, num_frames=4, size=32, seed=3)
    assert a["train"].read_text() == b["train"].read_text() and a["val"].read_text() == b["val"].read_text()
    everything = read_video_manifest(a["train"]) + read_video_manifest(a["val"])
    assert {Path(r.video).suffix for r in everything} == {".mp4", ".avi"}
    assert any(r.title is None for r in everything) or any(not r.ocr for r in everything)
    for r in everything[:4]:
        twin = tmp_path / "b" / Path(r.video).relative_to(tmp_path / "a")
        every = lambda t: np.arange(len(t))  # noqa: E731
        first, second = decode_clip(r.video, every)[0], decode_clip(twin, every)[0]
        assert np.abs(first.astype(float) - second).mean() < 1.0  # same content; the bytes may differ


# ---------------------------------------------------------------- dataset


def test_eval_items_are_deterministic(records):
    labels, tags = label_vocab(records), tag_vocab(records)
    ds = VideoTextDataset(records, num_frames=4, size=(24, 28), train=False, labels=labels, tags=tags)
    item = ds[1]
    assert item["frames"].shape == (4, 3, 24, 28) and item["frames"].dtype == torch.uint8
    record = records[1]
    assert item["id"] == record.id and item["index"] == 1 and item["failed"] == 0 and item["failed_reasons"] == ""
    assert item["title"] == (record.title or "") and item["ocr"] == " ".join(record.ocr)
    assert item["label"] == labels.index(record.label)
    assert item["tags"].dtype == torch.float32 and item["tags"].sum() == len(record.tags)
    assert all(item["tags"][tags.index(t)] == 1 for t in record.tags)
    assert torch.equal(ds[1]["frames"], item["frames"])
    direct, _ = decode_clip(record.video, make_sampler(4, train=False, rng=None), size=(24, 28))
    assert torch.equal(item["frames"], torch.from_numpy(direct).permute(0, 3, 1, 2))


def test_training_draws_depend_on_seed_index_and_epoch(records):
    ds = VideoTextDataset(records, num_frames=4, size=(SIZE, SIZE), train=True, crop_scale=(0.5, 1.0), seed=1)
    a = ds[2]["frames"]
    assert a.shape == (4, 3, SIZE, SIZE) and torch.equal(ds[2]["frames"], a)
    ds.set_epoch(1)
    b = ds[2]["frames"]
    assert not torch.equal(a, b)
    ds.set_epoch(0)
    assert torch.equal(ds[2]["frames"], a)
    plain = VideoTextDataset(records, num_frames=4, size=(SIZE, SIZE), train=True, seed=1)
    assert plain.reader.decode_size == (SIZE, SIZE) and ds.reader.decode_size == (37, 37)


def test_bad_videos_are_counted_and_redrawn(records, tmp_path, caplog):
    bad = broken_records(records, tmp_path)
    ds = VideoTextDataset(bad, num_frames=4, size=(SIZE, SIZE), train=False, max_redraws=20)
    reasons = []
    with caplog.at_level("WARNING", logger="mmpretrain.video.io.dataset"):
        for i, expected in enumerate(["missing", "empty", "unreadable", "truncated"]):
            item = ds[i]
            assert item["index"] >= 4 and item["failed"] >= 1
            assert item["failed_reasons"].split(",")[0] == expected
            used = bad[item["index"]]
            assert item["id"] == used.id and item["title"] == (used.title or "")
            assert item["frames"].float().std() > 5  # a real clip, never zeros
            reasons.append(item["failed_reasons"])
    assert "missing.mp4" in caplog.text and "truncated" in caplog.text
    assert ds[5]["failed"] == 0
    batch = collate_videos([ds[i] for i in range(6)])
    assert batch["failed"].tolist()[4:] == [0, 0] and batch["failed"].sum() >= 4
    assert batch["failed_reasons"][:4] == reasons


def test_redraws_are_bounded(records, tmp_path):
    bad = broken_records(records, tmp_path)[:4]
    ds = VideoTextDataset(bad, num_frames=4, size=(SIZE, SIZE), train=True, max_redraws=3)
    with pytest.raises(RuntimeError, match=r"4 unreadable videos in a row while loading sample 0 \(last: .*\.mp4"):
        ds[0]


def test_dataset_argument_errors(records):
    with pytest.raises(ValueError, match=r"data\.sampling"):
        VideoTextDataset(records, sampling="random")
    with pytest.raises(ValueError, match=r"data\.crop_scale"):
        VideoTextDataset(records, crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"has label '.*', not in labels"):
        VideoTextDataset(records, labels=["circle"])


def test_dataloader_with_workers(records):
    ds = VideoTextDataset(records, num_frames=4, size=(SIZE, SIZE), train=True, crop_scale=(0.6, 1.0))
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_videos)
    batches = list(loader)
    assert sum(len(b["id"]) for b in batches) == len(records)
    first = batches[0]
    assert first["frames"].shape == (4, 4, 3, SIZE, SIZE) and first["frames"].dtype == torch.uint8
    assert isinstance(first["title"], list) and isinstance(first["ocr"][0], str)
    assert first["failed"].dtype == torch.int64 and first["index"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------- frame shards


@pytest.fixture(scope="module")
def shards(demo, records, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    broken = replace(records[0], id="broken", video=str(root / "missing.mp4"))
    manifest = write_video_manifest([*records, broken], root / "with_broken.jsonl")
    out = prepare_frames(manifest, root / "frames", num_frames=8, size=(SIZE, SIZE), backend="decord", shard_size=5)
    return manifest, out


def test_shards_round_trip_equal_direct_decoding(records, shards):
    _, out = shards
    store = FrameShards(out)
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["count"] == len(records) and meta["failed"] == 1 and meta["num_frames"] == 8
    assert [s["count"] for s in meta["shards"]] == [5, 5, 2] and len(meta["source"]["sha256"]) == 64
    assert json.loads((out / "failed.jsonl").read_text())["reason"] == "missing"
    for r in records:
        direct, indices = decode_clip(r.video, make_sampler(8, train=False, rng=None), size=(SIZE, SIZE))
        np.testing.assert_array_equal(store.get(r.id), direct)
        assert store.frame_indices(r.id) == indices.tolist()
    with pytest.raises(VideoDecodeError) as info:
        store.get("broken")
    assert info.value.reason == "missing"
    with pytest.raises(KeyError, match=r"video id 'nope' is not in frames directory .*frames"):
        store.get("nope")


def test_dataset_reads_shards_like_videos(records, shards):
    manifest, out = shards
    both = read_video_manifest(manifest)
    from_videos = VideoTextDataset(both, num_frames=8, size=(SIZE, SIZE), train=False)
    from_shards = VideoTextDataset(both, num_frames=8, size=(SIZE, SIZE), train=False, frames_dir=str(out))
    for i in (0, 5, len(records) - 1):
        assert torch.equal(from_shards[i]["frames"], from_videos[i]["frames"])
    broken = from_shards[len(both) - 1]
    assert broken["failed"] == 1 and broken["failed_reasons"] == "missing" and broken["id"] != "broken"
    train = VideoTextDataset(both, num_frames=4, size=(24, 24), train=True, frames_dir=str(out), crop_scale=(0.5, 1))
    batch = next(iter(DataLoader(train, batch_size=4, num_workers=2, collate_fn=collate_videos)))
    assert batch["frames"].shape == (4, 4, 3, 24, 24)
    with pytest.raises(ValueError, match=r"not in frames directory"):
        VideoTextDataset([replace(both[0], id="unknown")], frames_dir=str(out))


def test_shard_directory_checks(shards, tmp_path):
    _, out = shards
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    np.save(copy / "frames-00001.npy", np.load(copy / "frames-00001.npy")[:4])
    with pytest.raises(ValueError, match=r"shard frames-00001\.npy holds"):
        FrameShards(copy)
    (copy / "frames-00001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard frames-00001\.npy listed in manifest\.json is missing"):
        FrameShards(copy)
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        FrameShards(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a frames directory"):
        prepare_frames(shards[0], tmp_path / "other")


@pytest.mark.slow  # two fresh interpreters, each importing the mmpretrain.video package (torch, Lightning)
def test_scripts_prepare_frames_and_demo(demo, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmpretrain.cli.prepare_frames",
            str(demo["val"]),
            str(tmp_path / "frames"),
            "--num-frames",
            "4",
            "--size",
            "24",
            "32",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 videos" in done.stdout and "0 failed" in done.stdout
    store = FrameShards(tmp_path / "frames")
    assert len(store) == 4 and store.get(store.ids[0]).shape == (4, 24, 32, 3)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmpretrain.video.demo",
            str(tmp_path / "demo"),
            "--per-class",
            "2",
            "--size",
            "32",
            "--num-frames",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["counts"] == {"train": 4, "val": 4}  # one video per class held out
