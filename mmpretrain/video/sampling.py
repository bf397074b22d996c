"""Which frames of a video make a clip: TSN segment sampling and fixed-stride sampling, in pure numpy.

Samplers are built before the video is opened and called with its real frame count, so `decode_clip` can
count the frames in the stream first and never asks for one that is not there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SAMPLING_MODES = ("segment", "stride")


def _check(num_frames: int, num_samples: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if num_samples < 1:
        raise ValueError(f"number of frames to sample must be >= 1, got {num_samples}")


def _train_rng(train: bool, rng: np.random.Generator | None) -> np.random.Generator | None:
    return (rng if rng is not None else np.random.default_rng()) if train else None


def segment_indices(
    num_frames: int, num_segments: int, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """TSN sampling: split the video into `num_segments` equal segments and take one frame from each.

    Segment k holds frames `[floor(k * n / s), floor((k + 1) * n / s))`: the edges are computed in floating
    point and floored once, so frames spread over the whole video (ALPRO's `np.arange(0, n, n / s, dtype=int)`
    truncates the step instead and bunches frames at the start). Training takes a uniformly random frame of each
    segment; evaluation takes the middle one, `(start + stop) // 2`. A video shorter than `num_segments`
    repeats its frames evenly, still in order.

    Args:
        num_frames: frames in the video.
        num_segments: frames to return.
        train: random frame per segment when True, middle frame when False (deterministic).
        rng: random source for training; a fresh unseeded one when None.

    Returns:
        int64 array of `num_segments` sorted frame indices in `[0, num_frames)`.
    """
    _check(num_frames, num_segments)
    rng = _train_rng(train, rng)
    if num_frames < num_segments:
        offset = rng.random(num_segments) if rng is not None else 0.5
        positions = (np.arange(num_segments) + offset) * num_frames / num_segments
        return np.minimum(np.floor(positions).astype(np.int64), num_frames - 1)
    edges = np.floor(np.linspace(0.0, num_frames, num_segments + 1)).astype(np.int64)
    start, stop = edges[:-1], edges[1:]
    if rng is None:
        return (start + stop) // 2
    return start + np.floor(rng.random(num_segments) * (stop - start)).astype(np.int64)


def stride_indices(
    num_frames: int, num_samples: int, stride: int, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """`num_samples` frames `stride` apart: a random window when training, the centred one for evaluation.

    A video shorter than the window starts at frame 0 and repeats its last frame, so the clip keeps its length
    and its frames stay in order.

    Returns:
        int64 array of `num_samples` sorted frame indices in `[0, num_frames)`.
    """
    _check(num_frames, num_samples)
    if stride < 1:
        raise ValueError(f"data.stride must be >= 1, got {stride}")
    rng = _train_rng(train, rng)
    span = (num_samples - 1) * stride + 1
    slack = num_frames - span
    if slack <= 0:
        start = 0
    elif rng is None:
        start = slack // 2
    else:
        start = int(rng.integers(0, slack + 1))
    return np.minimum(start + np.arange(num_samples, dtype=np.int64) * stride, num_frames - 1)


def make_sampler(
    num_frames: int, *, mode: str = "segment", stride: int = 4, train: bool, rng: np.random.Generator | None
) -> Callable[[int], np.ndarray]:
    """A function from a video's frame count to the `num_frames` indices to decode (the `sample` of `decode_clip`).

    Args:
        num_frames: clip length T.
        mode: "segment" (TSN) or "stride" (data.sampling).
        stride: frame step for "stride".
        train: random sampling when True, deterministic when False.
        rng: random source for training.
    """
    if num_frames < 1:
        raise ValueError(f"data.num_frames must be >= 1, got {num_frames}")
    if mode == "segment":
        return lambda total: segment_indices(total, num_frames, train=train, rng=rng)
    if mode == "stride":
        return lambda total: stride_indices(total, num_frames, stride, train=train, rng=rng)
    raise ValueError(f"unknown data.sampling '{mode}'; choose from {', '.join(SAMPLING_MODES)}")
