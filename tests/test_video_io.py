"""Video I/O: frame sampling; decord and PyAV decoding (agreement, fallback, bad files, lying headers); manifests."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import textwrap
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mmpretrain.video.io import decoding
from mmpretrain.video.io.decoding import VideoDecodeError, decode_clip, probe_video
from mmpretrain.video.io.manifest import (
    label_vocab,
    read_video_manifest,
    tag_vocab,
    write_video_manifest,
)
from mmpretrain.video.io.sampling import make_sampler, segment_indices, stride_indices

SIZE = 64
BITS = 6  # frame number in binary, one 10-px block per bit, in the top rows of every frame


def pattern(i: int) -> np.ndarray:
    """Frame i of a test video: its number as black/white blocks (survives compression) over a gradient."""
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    a[20:] = np.linspace(40, 200, SIZE, dtype=np.uint8)[None, :, None]
    a[20:, :, 1] = (i * 9) % 256
    for b in range(BITS):
        if i >> b & 1:
            a[:16, b * 10 : b * 10 + 10] = 255
    return a


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Read the number back from decoded frames (any size: blocks are located proportionally)."""
    h, w = frames.shape[1:3]
    numbers = []
    for f in frames:
        bits = [
            f[2 * h // SIZE : 14 * h // SIZE, (b * 10 + 2) * w // SIZE : (b * 10 + 8) * w // SIZE].mean() > 128
            for b in range(BITS)
        ]
        numbers.append(sum(1 << b for b, on in enumerate(bits) if on))
    return numbers


def wide_pattern(i: int) -> np.ndarray:
    """A 64x96 frame: `pattern(i)` beside a diagonal ramp, so any turn or flip of it is visible."""
    ramp = (np.add.outer(np.arange(SIZE), np.arange(32)) * 2).astype(np.uint8)
    return np.concatenate([pattern(i), np.stack([ramp, 255 - ramp, ramp // 2], -1)], axis=1)


def write_test_video(
    path: Path,
    codec: str,
    n: int = 24,
    fps: int = 8,
    gop: int | None = None,
    fmt=None,
    rotation: int = 0,
    pts_ms: list[int] | None = None,
    draw=pattern,
    **opts,
):
    """`rotation`: a display matrix turning the picture that many degrees counter-clockwise; `pts_ms`: each
    frame's presentation time in milliseconds (variable frame rate)."""
    with av.open(str(path), "w", format=fmt, options=opts) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = draw(0).shape[:2]
        stream.pix_fmt = "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0" if gop else "scenecut=0"
            stream.codec_context.options = {"crf": "12", "preset": "veryfast", "x264-params": params}
        else:
            stream.codec_context.bit_rate = 4_000_000
            if gop:
                stream.codec_context.gop_size = gop
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(draw(i), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_test_video(root / "h264.mp4", "libx264", gop=4),  # short GOP with B-frames: seeks really seek
        "mp4_long": write_test_video(root / "long.mp4", "libx264", n=40),
        "avi": write_test_video(root / "mpeg4.avi", "mpeg4", gop=6),
        "faststart": write_test_video(root / "faststart.mp4", "libx264", movflags="faststart"),
    }


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- sampling


def test_segment_eval_is_the_frame_shown_at_each_segment_centre():
    # a count stands for frames one second apart; 10 frames last 10 s: centres 1.67, 5, 8.33 s
    assert segment_indices(10, 3, train=False).tolist() == [1, 5, 8]
    assert segment_indices(16, 4, train=False).tolist() == [2, 6, 10, 14]
    assert segment_indices(8, 8, train=False).tolist() == list(range(8))
    # shorter than the clip: floor((k + 0.5) * 3 / 8), frames repeated evenly and in order
    assert segment_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # times in seconds give the same answer whatever their unit or start
    assert segment_indices(2.0 + np.arange(16) / 25, 4, train=False).tolist() == [2, 6, 10, 14]


def test_segment_sampling_follows_time_on_variable_frame_rate():
    """60 frames in the first second, then 4 frames over 8 s: by index 7 of 8 picks would land in second one."""
    times = np.concatenate([np.arange(60) / 60, 1.0 + 2.0 * np.arange(4)])  # last frame at 7 s, shown until 9 s
    idx = segment_indices(times, 8, train=False)
    centres = (np.arange(8) + 0.5) * 9.0 / 8
    assert np.all(times[idx] <= centres) and np.all(np.concatenate([times, [9.0]])[idx + 1] > centres)
    assert (times[idx] < 1.0).sum() == 1  # one segment of eight lies in the first second
    for seed in range(50):
        drawn = times[segment_indices(times, 8, train=True, rng=np.random.default_rng(seed))]
        assert (drawn < 1.0).sum() <= 2 and drawn.max() >= 5.0
    with pytest.raises(ValueError, match="sorted"):
        segment_indices(np.array([0.0, 2.0, 1.0]), 2, train=False)
    with pytest.raises(ValueError, match="0 frames"):
        segment_indices(np.array([]), 2, train=False)


def test_segment_train_is_random_within_segments_and_seeded():
    n, s = 100, 8
    lo, hi = np.floor(np.arange(s) * n / s), np.floor(np.arange(1, s + 1) * n / s)
    seen = set()
    for seed in range(200):
        idx = segment_indices(n, s, train=True, rng=np.random.default_rng(seed))
        assert np.all((idx >= lo) & (idx <= hi))
        assert np.all(np.diff(idx) >= 0)
        seen.update(idx.tolist())
    assert max(seen) >= 96 and min(seen) <= 2  # reaches both ends: no ALPRO-style bunching at the start
    a = segment_indices(n, s, train=True, rng=np.random.default_rng(7))
    b = segment_indices(n, s, train=True, rng=np.random.default_rng(7))
    c = segment_indices(n, s, train=True, rng=np.random.default_rng(8))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    short = segment_indices(3, 8, train=True, rng=np.random.default_rng(0))
    assert len(short) == 8 and np.all(np.diff(short) >= 0) and short.max() <= 2


def test_stride_sampling():
    # span 29 of 40 frames: centred start (40 - 29) // 2 = 5
    assert stride_indices(40, 8, 4, train=False).tolist() == list(range(5, 34, 4))
    for seed in range(20):
        idx = stride_indices(40, 8, 4, train=True, rng=np.random.default_rng(seed))
        assert np.all(np.diff(idx) == 4) and idx[0] >= 0 and idx[-1] < 40
    assert stride_indices(10, 8, 4, train=False).tolist() == [0, 4, 8, 9, 9, 9, 9, 9]


def test_make_sampler_modes():
    rng = np.random.default_rng(0)
    assert make_sampler(4, mode="segment", train=False, rng=None)(8).tolist() == [1, 3, 5, 7]
    assert make_sampler(3, mode="stride", stride=2, train=True, rng=rng)(100).shape == (3,)
    with pytest.raises(ValueError, match=r"data\.sampling"):
        make_sampler(4, mode="uniform", train=False, rng=None)


# ---------------------------------------------------------------- decoding


DECODERS = [("decord", "auto"), ("pyav", "seek"), ("pyav", "full"), ("pyav", "auto")]


@pytest.mark.parametrize("size", [None, (32, 56)])
@pytest.mark.parametrize("kind", ["mp4", "avi", "mp4_long"])
def test_decord_and_pyav_return_the_same_frames(videos, kind, size, caplog):
    wanted = [0, 3, 5, 6, 11, 17, 23] if kind != "mp4_long" else [2, 9, 20, 33, 39]
    got = {}
    for backend, mode in DECODERS:
        if backend == "decord" and decoding.decord is None:
            continue
        caplog.clear()
        with caplog.at_level("DEBUG", logger="mmpretrain.video.io.decoding"):
            frames, indices = decode_clip(
                videos[kind], lambda t: np.array(wanted), size=size, backend=backend, pyav_mode=mode
            )
        assert "using PyAV" not in caplog.text  # decord really decoded its share
        h, w = size or (SIZE, SIZE)
        assert frames.shape == (len(wanted), h, w, 3) and frames.dtype == np.uint8
        assert indices.tolist() == wanted
        assert frame_numbers(frames) == wanted, (backend, mode)
        got[(backend, mode)] = frames.astype(np.float32)
    reference = got[("pyav", "full")]
    for key, frames in got.items():
        assert np.abs(frames - reference).mean() < 1.0, key
    if size is None:
        assert np.abs(reference - np.stack([pattern(i) for i in wanted])).mean() < 6.0


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_video_decodes_upright_and_the_same_on_every_backend(tmp_path, rotation):
    """A display matrix (as phones write it): decord turns the picture upright, and PyAV must turn it the same."""
    path = tmp_path / f"rot{rotation}.mp4"
    write_test_video(path, "libx264", n=12, gop=4, rotation=rotation, draw=wide_pattern)
    turns = rotation // 90 % 4
    wanted = [1, 6, 10]
    upright = np.stack([np.rot90(wide_pattern(i), turns) for i in wanted]).astype(np.float32)
    for size in (None, (40, 72)):
        got = {}
        for backend, mode in DECODERS:
            if backend == "decord" and decoding.decord is None:
                continue
            frames, _ = decode_clip(path, lambda t: np.array(wanted), size=size, backend=backend, pyav_mode=mode)
            assert frames.shape == (3, *(size or upright.shape[1:3]), 3), (backend, mode)
            got[(backend, mode)] = frames.astype(np.float32)
        reference = got[("pyav", "full")]
        if size is None:
            assert np.abs(reference - upright).mean() < 6.0
        for key, frames in got.items():
            assert np.abs(frames - reference).mean() < (0.01 if size is None else 1.5), key


def test_variable_frame_rate_is_sampled_by_time_on_every_backend(tmp_path):
    """40 frames in the first 0.65 s, then 8 frames a second apart: segment frames must spread over the 9.65 s."""
    pts_ms = [round(i * 1000 / 60) for i in range(40)] + [1650 + 1000 * k for k in range(8)]
    path = write_test_video(tmp_path / "vfr.mp4", "libx264", n=len(pts_ms), gop=8, pts_ms=pts_ms)
    index = decoding._index_stream(str(path))
    assert np.allclose(index.times, np.array(pts_ms) / 1000, atol=1e-3)
    results = {}
    for backend, mode in DECODERS:
        if backend == "decord" and decoding.decord is None:
            continue
        frames, indices = decode_clip(path, make_sampler(8, train=False, rng=None), backend=backend, pyav_mode=mode)
        assert frame_numbers(frames) == indices.tolist(), (backend, mode)
        results[(backend, mode)] = indices.tolist()
    assert len({tuple(v) for v in results.values()}) == 1, results
    times = index.times[results[("pyav", "full")]]
    assert (times < 1.0).sum() <= 1 and times.max() > 8.0  # by frame number, 6 of 8 would fall before 0.65 s
    assert np.all(np.diff(times) > 0.5)


def test_repeated_and_backward_indices(videos):
    wanted = [20, 2, 2, 13, 0]  # out of order and repeated: seek mode must go back
    for backend, mode in DECODERS:
        frames, indices = decode_clip(videos["mp4"], lambda t: np.array(wanted), backend=backend, pyav_mode=mode)
        assert indices.tolist() == wanted and frame_numbers(frames) == wanted, (backend, mode)


def test_decord_output_widths_it_cannot_make_fall_back(videos, caplog):
    """decord 0.6 fails with an array size mismatch for some small output widths (16, 24, 48, 72 px here)."""
    with caplog.at_level("INFO", logger="mmpretrain.video.io.decoding"):
        frames, _ = decode_clip(videos["avi"], lambda t: np.array([4, 9]), size=(32, 48), backend="decord")
    assert frames.shape == (2, 32, 48, 3) and frame_numbers(frames) == [4, 9]
    if decoding.decord is not None:
        assert "using PyAV" in caplog.text


def test_auto_mode_seeks_only_when_it_saves_decoding(videos):
    short_gop = decoding._index_stream(str(videos["mp4"]))  # keyframes every 4 frames
    assert short_gop.keyframes.tolist() == [0, 4, 8, 12, 16, 20]
    assert decoding._choose_mode(np.array([1, 9, 17, 23]), short_gop.keyframes) == "seek"
    assert decoding._choose_mode(np.arange(0, 24, 3), short_gop.keyframes) == "full"
    one_gop = decoding._index_stream(str(videos["mp4_long"]))
    assert decoding._choose_mode(np.array([2, 9, 20, 33, 39]), one_gop.keyframes) == "full"


def test_probe_video(videos):
    info = probe_video(videos["mp4"])
    assert (info.num_frames, info.fps, info.width, info.height) == (24, 8.0, SIZE, SIZE)
    assert info.backend == ("decord" if decoding.decord is not None else "pyav")
    assert probe_video(videos["avi"], backend="pyav").backend == "pyav"


def test_av1_falls_back_to_pyav(tmp_path, monkeypatch, caplog):
    if not has_encoder("libsvtav1"):
        pytest.skip("no AV1 encoder (libsvtav1) in this PyAV build")
    monkeypatch.setenv("SVT_LOG", "1")
    for name, fmt in [("av1.mkv", "matroska"), ("av1.mp4", "mp4")]:
        path = write_test_video(tmp_path / name, "libsvtav1", fmt=fmt)
        caplog.clear()
        with caplog.at_level("DEBUG", logger="mmpretrain.video.io.decoding"):
            frames, _ = decode_clip(path, lambda t: np.array([1, 10, len(t) - 1]), backend="decord")
        assert frame_numbers(frames) == [1, 10, 23]
        if decoding.decord is not None:  # decord 0.6 cannot open AV1 (decord #319)
            assert "using PyAV" in caplog.text
            assert probe_video(path).backend == "pyav"


def cut(path: Path, out: Path, fraction: float = 0.5) -> Path:
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def bad_file(kind: str, videos: dict[str, Path], tmp: Path) -> Path:
    if kind == "missing":
        return tmp / "nope.mp4"
    if kind == "empty":
        (tmp / "empty.mp4").write_bytes(b"")
        return tmp / "empty.mp4"
    if kind == "random":
        (tmp / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        return tmp / "random.mp4"
    if kind == "audio":
        with wave.open(str(tmp / "audio.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(np.zeros(800, np.int16).tobytes())
        return tmp / "audio.wav"
    if kind == "garbled":  # a complete MP4 whose second half of picture data is noise
        data = bytearray(videos["faststart"].read_bytes())
        tail = len(data) // 2
        data[tail:] = np.random.default_rng(1).integers(0, 256, len(data) - tail, dtype=np.uint8).tobytes()
        (tmp / "garbled.mp4").write_bytes(bytes(data))
        return tmp / "garbled.mp4"
    source = {"half_mp4": "mp4", "half_faststart": "faststart", "half_avi": "avi"}[kind]
    return cut(videos[source], tmp / f"{kind}{videos[source].suffix}")


BAD = {
    "missing": "missing",
    "empty": "empty",
    "random": "unreadable",
    "audio": "no_video_stream",
    "half_mp4": "truncated",
    "half_faststart": "truncated",
    "half_avi": "truncated",
    "garbled": "decode_error",
}


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("kind", list(BAD))
def test_bad_files_raise_with_reason(videos, tmp_path, kind, backend):
    path = bad_file(kind, videos, tmp_path)
    with pytest.raises(VideoDecodeError) as info:
        decode_clip(path, lambda t: np.arange(min(len(t), 24)), backend=backend, pyav_mode="full")
    assert info.value.reason == BAD[kind]
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_stray_bytes_after_a_complete_mp4_are_not_truncation(videos, tmp_path):
    padded = tmp_path / "padded.mp4"
    padded.write_bytes(videos["mp4"].read_bytes() + b"\0\0\n")
    frames, _ = decode_clip(padded, lambda t: np.array([3, 7]), backend="pyav")
    assert frame_numbers(frames) == [3, 7]


def test_decode_error_pickles():
    """DataLoader and prepare_frames workers send errors between processes."""
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "truncated", "cut")))
    assert (err.path, err.reason, err.detail) == ("/x/y.mp4", "truncated", "cut")


def lying_avi(source: Path, out: Path, frames: int) -> Path:
    """Rewrite the AVI headers (avih total frames, strh length) to claim `frames` frames."""
    data = bytearray(source.read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    data[avih + 24 : avih + 28] = struct.pack("<I", frames)
    data[strh + 40 : strh + 44] = struct.pack("<I", frames)
    out.write_bytes(bytes(data))
    return out


def test_over_reported_frame_counts_never_hang(videos, tmp_path):
    """A header claiming 48 frames of a 24-frame file, and a sampler asking past the end: both end quickly."""
    lie = lying_avi(videos["avi"], tmp_path / "lie.avi", 48)
    with av.open(str(lie)) as container:
        assert container.streams.video[0].frames == 48  # the header really lies
    script = textwrap.dedent(f"""
        import json, numpy as np
        from mmpretrain.video.io.decoding import decode_clip
        out = {{}}
        for backend in ("decord", "pyav"):
            asked = []
            def sample(times):
                n = len(times)
                asked.append(n)
                return np.array([0, n // 2, n - 1])
            frames, idx = decode_clip({str(lie)!r}, sample, backend=backend)
            out[backend] = [asked, idx.tolist()]
        try:
            decode_clip({str(lie)!r}, lambda t: np.array([0, 47]), backend="decord")
        except ValueError as err:
            out["beyond"] = str(err)
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for backend in ("decord", "pyav"):
        assert out[backend] == [[24], [0, 12, 23]]
    assert "frames [47] of a video with 24 frames" in out["beyond"]


@pytest.mark.parametrize("mode", ["seek", "full"])
def test_pyav_samples_again_when_fewer_frames_decode_than_counted(videos, monkeypatch, mode):
    """Packets that decode to nothing: PyAV finds the real count and asks the sampler again, never pads."""
    real = decoding._index_stream

    def over_counted(path: str):
        index = real(path)
        step = index.pts[1] - index.pts[0]
        pts = np.concatenate([index.pts, index.pts[-1] + step * np.arange(1, 7)])
        times = np.arange(len(pts)) / index.fps
        return decoding._StreamIndex(pts, times, index.keyframes, len(pts), index.fps, index.width, index.height)

    monkeypatch.setattr(decoding, "_index_stream", over_counted)
    asked = []

    def sample(times):
        asked.append(len(times))
        return np.array([1, len(times) - 1])

    frames, indices = decode_clip(videos["mp4"], sample, backend="decord", pyav_mode=mode)
    assert asked == [30, 24]  # decord's count (24) disagreed with 30, so PyAV decoded, recounted and re-sampled
    assert indices.tolist() == [1, 23] and frame_numbers(frames) == [1, 23]


def test_bad_arguments(videos):
    with pytest.raises(ValueError, match="video backend"):
        decode_clip(videos["mp4"], lambda t: np.arange(2), backend="opencv")
    with pytest.raises(ValueError, match="pyav_mode"):
        decode_clip(videos["mp4"], lambda t: np.arange(2), pyav_mode="fast")
    with pytest.raises(ValueError, match="non-empty 1-D integer"):
        decode_clip(videos["mp4"], lambda t: np.array([]))


# ---------------------------------------------------------------- manifests


def test_jsonl_manifest(tmp_path):
    (tmp_path / "clips").mkdir()
    lines = [
        {
            "id": "a",
            "video": "clips/a.mp4",
            "title": "a red circle",
            "ocr": "PROMO 42",
            "label": "circle",
            "tags": ["red", "circle"],
        },
        {"video": "clips/b.mp4", "ocr": ["SALE 1", "NEW 2"], "label": 3},
        {"video": str(tmp_path / "clips" / "c.mp4")},
    ]
    text = json.dumps(lines[0]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[1:]) + "\n"
    (tmp_path / "m.jsonl").write_text(text)
    records = read_video_manifest(tmp_path / "m.jsonl")
    a, b, c = records
    assert a.video == str((tmp_path / "clips" / "a.mp4").resolve()) and a.line == 1
    assert a.ocr == ("PROMO 42",) and a.tags == ("red", "circle") and a.title == "a red circle"
    assert b.id == "clips/b.mp4" and b.ocr == ("SALE 1", "NEW 2") and b.label == "3" and b.title is None
    assert b.line == 3 and c.id == "clips/c.mp4" and c.ocr == () and c.tags == ()
    assert label_vocab(records) == ["3", "circle"] and tag_vocab(records) == ["circle", "red"]
    again = read_video_manifest(write_video_manifest(records, tmp_path / "copy.jsonl"))
    assert [(r.id, r.video, r.title, r.ocr, r.label, r.tags) for r in again] == [
        (r.id, r.video, r.title, r.ocr, r.label, r.tags) for r in records
    ]
    assert json.loads((tmp_path / "copy.jsonl").read_text().splitlines()[0])["video"] == "clips/a.mp4"


def test_csv_manifest(tmp_path):
    (tmp_path / "m.csv").write_text(
        "id,video,title,ocr,label,tags\n"
        "a,a.mp4,a red circle,PROMO 42|SALE 7,circle,red|circle\n"
        'b,sub/b.mp4,,"[""NEW 3""]",,"[""blue""]"\n'
        "\n"
        'c,c.mp4,"title, with comma",,,\n'
    )
    a, b, c = read_video_manifest(tmp_path / "m.csv")
    assert a.ocr == ("PROMO 42", "SALE 7") and a.tags == ("red", "circle") and a.label == "circle"
    assert b.video == str((tmp_path / "sub" / "b.mp4").resolve()) and b.title is None and b.ocr == ("NEW 3",)
    assert b.tags == ("blue",) and b.label is None
    assert c.title == "title, with comma" and c.line == 5
    again = read_video_manifest(write_video_manifest([a, b, c], tmp_path / "copy.csv"))
    assert [(r.id, r.ocr, r.tags) for r in again] == [(r.id, r.ocr, r.tags) for r in (a, b, c)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"video": "a.mp4"}\n{"video": "b.mp4",\n', r"m.jsonl:2: invalid JSON"),
        ('{"video": "a.mp4"}\n\n{"title": "x"}\n', r"m.jsonl:3: missing the required key 'video'"),
        ('{"video": 3}\n', r"m.jsonl:1: 'video' must be a string"),
        ('{"video": "a.mp4", "ocr": 5}\n', r"m.jsonl:1: 'ocr' must be a string or a list of strings"),
        ('{"video": "a.mp4", "tags": "red"}\n', r"m.jsonl:1: 'tags' must be a list of strings"),
        ('{"video": "a.mp4", "title": ["x"]}\n', r"m.jsonl:1: 'title' must be a string"),
        (
            '{"video": "a.mp4", "id": "x"}\n{"video": "b.mp4", "id": "x"}\n',
            r"m.jsonl:2: duplicate id 'x' \(first on line 1\)",
        ),
        ("[]\n", r"m.jsonl:1: expected one JSON object per line"),
        ("\n\n", r"m.jsonl: the manifest lists no videos"),
    ],
)
def test_manifest_errors_name_file_and_line(tmp_path, content, message):
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_video_manifest(tmp_path / "m.jsonl")


def test_manifest_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        read_video_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown manifest format"):
        read_video_manifest(tmp_path / "m.txt")
    (tmp_path / "m.csv").write_text("path,title\na.mp4,x\n")
    with pytest.raises(ValueError, match=r"m.csv:1: the CSV header has no 'video' column"):
        read_video_manifest(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text('video,ocr\na.mp4,"[""x"", 3]"\n')
    with pytest.raises(ValueError, match=r"n.csv:2: 'ocr' must be a string or a list of strings"):
        read_video_manifest(tmp_path / "n.csv")
