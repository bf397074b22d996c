"""Decode the sampled frames of a video: decord when it can, PyAV otherwise, with counts taken from the stream.

Frame counts. A container header can claim more frames than the file holds (an interrupted copy, a buggy muxer),
and decord's `get_batch` spins forever waiting for a frame that never arrives (decord #373). So every read first
demuxes the video stream with PyAV without decoding it (about 4 ms for a 10-s 720p H.264 file) and counts the
non-empty packets; that count, never the header's, is what the sampler sees, as one presentation time per frame
(seconds from the first, from the packets' timestamps), so segments are cut by time on variable-frame-rate files.
decord then decodes only when its own frame count equals the packet count; any disagreement, and any decord error
(AV1, some AVI/WebM), sends the file to PyAV. PyAV matches decoded frames to wanted ones by presentation timestamp
(exact for any frame rate). If the stream ends before a wanted frame comes out of the decoder (packets that decode
to nothing), PyAV counts the frames that do decode, asks the sampler again with that count and decodes once more. A
file that still comes up short raises `VideoDecodeError`: a clip is never padded with repeated or zero frames.

Truncation. Before decoding, the container's own sizes are checked (MP4 boxes, the RIFF size of AVI, the
Matroska segment size): a file shorter than its container says was cut off, and its frames no longer match its
title, so it is refused as "truncated" rather than decoded in part.

Rotation. Phones store portrait video as landscape pictures plus a display matrix; decord turns the pictures
upright, so PyAV does too (the same quarter turns, done on the decoded picture before it is scaled, as decord's
filter graph does), and a file looks the same whichever library decodes it.

Threads. Each decoder uses one thread: DataLoader workers are the parallelism, and more threads per worker only
oversubscribe the cores.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from mmpretrain.errors import ConfigError, MMPretrainError

try:
    import decord
except ImportError:  # decord has no wheels for aarch64 or macOS arm; PyAV decodes everything alone there
    decord = None

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "auto")
#: file suffixes taken for videos where a path alone must say what it holds (search queries)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"})
PYAV_MODES = ("auto", "seek", "full")
REASONS = ("missing", "empty", "unreadable", "no_video_stream", "truncated", "decode_error")

# A seek flushes the decoder and re-reads from the keyframe; it is charged like decoding this many extra frames.
SEEK_COST_FRAMES = 2

_MP4_TOP_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"styp"}
_fallback_logged: set[str] = set()


class VideoDecodeError(MMPretrainError, RuntimeError):
    """A video that cannot give the frames asked of it.

    Attributes:
        path: the file.
        reason: one of `REASONS`, short so failures can be counted by kind.
        detail: what the decoder or the container check said.
    """

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"cannot decode video {path} ({reason})" + (f": {detail}" if detail else ""))

    def __reduce__(self) -> tuple:
        # the default pickling passes only the message back to __init__; worker processes need all three fields
        return type(self), (self.path, self.reason, self.detail)


@dataclass(frozen=True)
class _Media:
    """A video to read: a file, or the bytes of a WebDataset sample held in memory under a display name.

    Both PyAV and decord read a file-like object, so bytes are decoded without a temporary file.
    """

    name: str
    data: bytes | None = None

    def __str__(self) -> str:
        return self.name

    def input(self) -> str | io.BytesIO:
        """What `av.open` and `decord.VideoReader` take: the path, or a fresh stream over the bytes."""
        return self.name if self.data is None else io.BytesIO(self.data)


def _media(video: str | os.PathLike | bytes, name: str | None) -> _Media:
    if isinstance(video, bytes | bytearray | memoryview):
        return _Media(name or "<bytes>", bytes(video))
    return _Media(os.fspath(video))


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns without decoding; `backend` is the library that would decode the file."""

    num_frames: int
    fps: float
    width: int
    height: int
    backend: str


@dataclass(frozen=True)
class _StreamIndex:
    """The video stream as demuxing sees it: `pts[i]` is frame i's timestamp (None when missing or repeated),
    `times[i]` its presentation time in seconds from the first frame (frame i / fps when there are no timestamps)."""

    pts: np.ndarray | None
    times: np.ndarray
    keyframes: np.ndarray
    num_frames: int
    fps: float
    width: int
    height: int


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} '{value}'; choose from {', '.join(choices)}")


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ValueError(f"size must be (height, width) with positive entries, got {size}")
    return int(size[0]), int(size[1])


def _vint(f: BinaryIO) -> tuple[int | None, int]:
    """One EBML variable-size integer: (value, or None for 'unknown size'; bytes read)."""
    first = f.read(1)
    if not first or first[0] == 0:
        raise EOFError
    length = 9 - first[0].bit_length()
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        raise EOFError
    value = first[0] & ((1 << (8 - length)) - 1)
    for byte in rest:
        value = value << 8 | byte
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _matroska_cut_off(f: BinaryIO, size: int) -> str:
    try:
        f.seek(4)
        header, length = _vint(f)
        if header is None:
            return ""
        f.seek(4 + length + header)
        if f.read(4) != b"\x18\x53\x80\x67":
            return ""
        segment, _ = _vint(f)
    except EOFError:
        return "Matroska header is cut off"
    if segment is None:  # written live, size unknown
        return ""
    end = f.tell() + segment
    return f"Matroska segment ends at byte {end}, the file has {size}" if end > size else ""


def _mp4_cut_off(f: BinaryIO, size: int) -> str:
    """Walk the top-level boxes: one that runs past the end, or no movie index at all, means the file was cut."""
    pos, has_index = 0, False
    while pos < size:
        f.seek(pos)
        header = f.read(16)
        if len(header) < 8:
            # a few stray bytes after a complete file are ignored by players; before the index they are a cut
            return "" if has_index else f"MP4 box header at byte {pos} is cut off"
        box, kind = struct.unpack(">I", header[:4])[0], header[4:8]
        if box == 1:
            if len(header) < 16:
                return f"MP4 box header at byte {pos} is cut off"
            box = struct.unpack(">Q", header[8:16])[0]
        elif box == 0:
            box = size - pos
        if box < 8:
            return ""  # not a box layout this check understands; the demuxer judges
        if pos + box > size:
            return f"MP4 box '{kind.decode('latin-1')}' at byte {pos} needs {box} bytes, {size - pos} remain"
        has_index = has_index or kind in (b"moov", b"moof")
        pos += box
    return "" if has_index else "MP4 has no 'moov' box (it is written last, so the file was cut before it)"


def _cut_off(path: _Media, size: int) -> str:
    """Why the container's own sizes say the file was cut short; '' when they do not or the format is unknown."""
    with open(path.name, "rb") if path.data is None else io.BytesIO(path.data) as f:
        head = f.read(12)
        if head[:4] == b"RIFF":
            declared = struct.unpack("<I", head[4:8])[0] + 8
            return f"RIFF header declares {declared} bytes, the file has {size}" if declared > size else ""
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return _matroska_cut_off(f, size)
        if head[4:8] in _MP4_TOP_BOXES:
            return _mp4_cut_off(f, size)
    return ""


def _check_file(path: _Media) -> None:
    if path.data is not None:
        size = len(path.data)
        if size == 0:
            raise VideoDecodeError(path, "empty", "zero bytes")
        cut = _cut_off(path, size)
        if cut:
            raise VideoDecodeError(path, "truncated", cut)
        return
    try:
        if not stat.S_ISREG(os.stat(path.name).st_mode) and not os.path.isdir(path.name):
            raise VideoDecodeError(path, "unreadable", "not a regular file (a FIFO, device or socket)")
        size = os.path.getsize(path.name)
    except FileNotFoundError:
        raise VideoDecodeError(path, "missing", "no such file") from None
    except OSError as err:
        raise VideoDecodeError(path, "unreadable", str(err)) from err
    if os.path.isdir(path.name):
        raise VideoDecodeError(path, "unreadable", "is a directory")
    if size == 0:
        raise VideoDecodeError(path, "empty", "zero bytes")
    try:
        cut = _cut_off(path, size)
    except OSError as err:
        raise VideoDecodeError(path, "unreadable", str(err)) from err
    if cut:
        raise VideoDecodeError(path, "truncated", cut)


@contextmanager
def _open(path: _Media | str) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The file's first video stream, set to decode on one thread; errors become `VideoDecodeError`."""
    path = path if isinstance(path, _Media) else _Media(path)
    try:
        container = av.open(path.input(), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(path, "unreadable", str(err)) from err
    try:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise VideoDecodeError(path, "no_video_stream", f"streams: {kinds}")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        yield container, stream
    finally:
        container.close()


def _index_stream(path: _Media | str) -> _StreamIndex:
    """Demux the video stream without decoding: frame count, presentation timestamps and keyframes."""
    stamps: list[int | None] = []
    keys: list[bool] = []
    with _open(path) as (container, stream):
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # PyAV's final flush packet and muxers' dropped-frame markers hold no picture
                    continue
                stamps.append(packet.pts if packet.pts is not None else packet.dts)
                keys.append(packet.is_keyframe)
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, "decode_error", f"demuxing failed after {len(stamps)} packets: {err}") from err
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = float(stream.time_base) if stream.time_base else 0.0
    if not stamps:
        raise VideoDecodeError(path, "decode_error", "the video stream has no packets")
    is_key = np.asarray(keys, dtype=bool)
    if any(s is None for s in stamps) or len(set(stamps)) != len(stamps) or not time_base:
        pts, keyframes = None, np.flatnonzero(is_key)
        times = _even_times(len(stamps), fps)
    else:
        raw = np.asarray(stamps, dtype=np.int64)
        order = np.argsort(raw, kind="stable")
        rank = np.empty(len(raw), dtype=np.int64)
        rank[order] = np.arange(len(raw))
        pts, keyframes = raw[order], np.sort(rank[is_key])
        times = (pts - pts[0]) * time_base
    return _StreamIndex(pts, times, keyframes, len(stamps), fps, width, height)


def _even_times(count: int, fps: float) -> np.ndarray:
    """Frame times of a stream without usable timestamps: evenly spaced at its nominal rate."""
    return np.arange(count, dtype=np.float64) / (fps if fps > 0 else 1.0)


def _checked_indices(indices: np.ndarray, num_frames: int, path: _Media) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or indices.size == 0 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{path}: the sampler must return a non-empty 1-D integer array, got {indices!r}")
    outside = indices[(indices < 0) | (indices >= num_frames)]
    if outside.size:
        raise ValueError(f"{path}: the sampler asked for frames {outside.tolist()} of a video with {num_frames} frames")
    return indices.astype(np.int64)


def _log_fallback(path: _Media, err: Exception) -> None:
    level = logging.DEBUG if path.name in _fallback_logged else logging.INFO
    _fallback_logged.add(path.name)
    log.log(level, "decord cannot decode %s (%s); using PyAV", path, str(err).strip().splitlines()[-1][:200])


def _decode_decord(path: _Media, indices: np.ndarray, size: tuple[int, int] | None, num_frames: int) -> np.ndarray:
    resize = {} if size is None else {"height": size[0], "width": size[1]}
    reader = decord.VideoReader(path.input(), ctx=decord.cpu(0), num_threads=1, **resize)
    if len(reader) != num_frames:
        raise RuntimeError(f"decord counts {len(reader)} frames, the stream has {num_frames} packets")
    frames = reader.get_batch(indices.tolist()).asnumpy()
    if frames.shape[0] != len(indices) or frames.dtype != np.uint8:
        raise RuntimeError(f"decord returned {frames.shape} {frames.dtype} for {len(indices)} frames")
    return frames


# filters that turn a picture upright, by counter-clockwise quarter turns of its display matrix
_UPRIGHT: dict[int, tuple[tuple[str, str | None], ...]] = {
    1: (("transpose", "cclock"),),
    2: (("hflip", None), ("vflip", None)),
    3: (("transpose", "clock"),),
}


def _upright(frame: av.VideoFrame) -> av.VideoFrame:
    """The picture as its display matrix says to show it, turned before any scaling and in the decoder's pixel
    format, as decord does (identical at the stored size; within 1/255 after bilinear scaling)."""
    turns = round(frame.rotation / 90) % 4
    if not turns:
        return frame
    graph = av.filter.Graph()
    last = graph.add_buffer(
        width=frame.width, height=frame.height, format=frame.format.name, time_base=frame.time_base
    )
    for name, args in _UPRIGHT[turns]:
        node = graph.add(name, args)
        last.link_to(node)
        last = node
    last.link_to(graph.add("buffersink"))
    graph.configure()
    graph.push(frame)
    return graph.pull()


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    """Upright RGB at `size`, bilinear like decord's scale filter (mean difference under 1/255 on 720p -> 224;
    bicubic differs by about 3), so a file that falls back to PyAV looks the same to the model."""
    frame = _upright(frame)
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", height=size[0], width=size[1], interpolation="BILINEAR")


def _assemble(arrays: dict[int, np.ndarray], keys: np.ndarray) -> np.ndarray:
    return np.stack([arrays[int(k)] for k in keys])


def _full_decode(path: _Media, indices: np.ndarray, pts: np.ndarray | None, size: tuple[int, int] | None):
    """Decode from the start, converting only wanted frames; frames are matched by pts, or by output order
    when `pts` is None. Returns None when the stream ends before every wanted frame came out."""
    keys = pts[indices] if pts is not None else indices
    wanted = set(keys.tolist())
    arrays: dict[int, np.ndarray] = {}
    with _open(path) as (container, stream):
        for count, frame in enumerate(container.decode(stream)):
            key = frame.pts if pts is not None else count
            if key in wanted and key not in arrays:
                arrays[key] = _to_rgb(frame, size)
                if len(arrays) == len(wanted):
                    return _assemble(arrays, keys)
    return None


def _keyframe_before(keyframes: np.ndarray, target: int) -> int:
    at = int(np.searchsorted(keyframes, target, side="right")) - 1
    return int(keyframes[at]) if at >= 0 else 0


def _seek_decode(path: _Media, indices: np.ndarray, index: _StreamIndex, size: tuple[int, int] | None):
    """For each wanted frame, seek to its keyframe unless it is reachable by decoding forward within the
    current group of pictures. Returns None when a seek fails or a wanted frame never comes out of the decoder."""
    pts = index.pts
    arrays: dict[int, np.ndarray] = {}
    with _open(path) as (container, stream):
        frames, position = None, -1
        for target in np.unique(indices).tolist():
            key = _keyframe_before(index.keyframes, target)
            if frames is None or target <= position or key > position:
                try:
                    container.seek(int(pts[key]), backward=True, any_frame=False, stream=stream)
                except av.error.FFmpegError:
                    return None
                frames, position = container.decode(stream), -1
            for frame in frames:
                if frame.pts is None:
                    continue
                at = int(np.searchsorted(pts, frame.pts))
                if at < len(pts) and pts[at] == frame.pts:
                    position = at
                    if position >= target:
                        break
            if position != target:
                return None
            arrays[target] = _to_rgb(frame, size)
    return _assemble(arrays, indices)


def _choose_mode(indices: np.ndarray, keyframes: np.ndarray) -> str:
    """'seek' when seeking decodes fewer frames than decoding from the start (short GOPs, sparse frames)."""
    wanted = np.unique(indices).tolist()
    full = wanted[-1] + 1
    seek, position = 0, -1
    for target in wanted:
        key = _keyframe_before(keyframes, target)
        if position < target and key <= position:
            seek += target - position
        else:
            seek += target - key + 1 + SEEK_COST_FRAMES
        position = target
    return "seek" if seek < full else "full"


def _decodable_times(path: _Media, fps: float) -> np.ndarray:
    """Presentation times (seconds from the first) of the frames that really decode, in output order."""
    with _open(path) as (container, stream):
        stamps = [frame.time for frame in container.decode(stream)]
    if not stamps or any(t is None for t in stamps) or np.any(np.diff(stamps) <= 0):
        return _even_times(len(stamps), fps)
    return np.asarray(stamps, dtype=np.float64) - stamps[0]


def _decode_pyav(
    path: _Media,
    index: _StreamIndex,
    indices: np.ndarray,
    sample: Callable[[np.ndarray], np.ndarray],
    size: tuple[int, int] | None,
    mode: str,
) -> tuple[np.ndarray, np.ndarray]:
    if index.pts is None:
        mode = "full"
    elif mode == "auto":
        mode = _choose_mode(indices, index.keyframes)
    frames = _seek_decode(path, indices, index, size) if mode == "seek" else None
    if frames is None:
        frames = _full_decode(path, indices, index.pts, size)
    if frames is not None:
        return frames, indices
    times = _decodable_times(path, index.fps)
    decodable = len(times)
    log.debug("%s: %d packets but %d frames decode; sampling again", path, index.num_frames, decodable)
    if decodable == 0:
        raise VideoDecodeError(path, "decode_error", f"none of {index.num_frames} packets decodes to a frame")
    indices = _checked_indices(sample(times), decodable, path)
    frames = _full_decode(path, indices, None, size)
    if frames is None:
        raise VideoDecodeError(path, "decode_error", f"frames {indices.tolist()} did not decode")
    return frames, indices


def decode_clip(
    path: str | os.PathLike | bytes,
    sample: Callable[[np.ndarray], np.ndarray],
    size: tuple[int, int] | None = None,
    backend: str = "decord",
    pyav_mode: str = "auto",
    name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a video's frame times, ask `sample` which frames to take, and decode exactly those, upright.

    Args:
        path: the video file, or its bytes (a WebDataset sample): decoded in memory by the same path.
        sample: presentation time of every frame (float64 seconds from the first, sorted; its length is the frame
            count) -> frame indices (see `mmpretrain.video.io.sampling.make_sampler`).
        size: (height, width) of the upright output to resize to while decoding; None keeps the stored size.
        backend: "decord" or "auto" (decord, PyAV for the files decord cannot read or count) or "pyav".
        pyav_mode: "seek" (to the keyframe before each wanted frame; best with short GOPs), "full" (decode in
            order, convert only wanted frames; best with long GOPs) or "auto" (whichever decodes fewer frames).
        name: what errors and logs call a video given as bytes (e.g. ``shard.tar/key.mp4``).

    Returns:
        (frames uint8 (T, H, W, 3) RGB, the int64 frame indices decoded).

    Raises:
        VideoDecodeError: the file is missing, empty, cut off, not a video, or does not decode.
        ConfigError: an unknown backend or PyAV mode. ValueError: a bad size, or `sample` returned indices outside
            [0, frame count).
    """
    _check_choice(backend, BACKENDS, "video backend")
    _check_choice(pyav_mode, PYAV_MODES, "pyav_mode")
    size = _check_size(size)
    path = _media(path, name)
    _check_file(path)
    index = _index_stream(path)
    indices = _checked_indices(sample(index.times), index.num_frames, path)
    if backend != "pyav" and decord is not None:
        try:
            return _decode_decord(path, indices, size, index.num_frames), indices
        except Exception as err:  # decord raises DECORDError, and RuntimeErrors from C++, for files it cannot read
            _log_fallback(path, err)
    try:
        return _decode_pyav(path, index, indices, sample, size, pyav_mode)
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, "decode_error", str(err)) from err


def probe_video(path: str | os.PathLike | bytes, backend: str = "decord", name: str | None = None) -> VideoInfo:
    """Frame count (packets in the stream), frame rate, size, and which library `decode_clip` would use.

    `backend` is "decord" when decord opens the file and counts the same frames, else "pyav"; the count is the
    demuxed packet count, which equals the decodable frames of any well-formed file.
    """
    _check_choice(backend, BACKENDS, "video backend")
    path = _media(path, name)
    _check_file(path)
    index = _index_stream(path)
    used = "pyav"
    if backend != "pyav" and decord is not None:
        try:
            if len(decord.VideoReader(path.input(), ctx=decord.cpu(0), num_threads=1)) == index.num_frames:
                used = "decord"
        except Exception as err:  # see decode_clip
            _log_fallback(path, err)
    return VideoInfo(index.num_frames, index.fps, index.width, index.height, used)
