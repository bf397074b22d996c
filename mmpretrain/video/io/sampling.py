"""Which frames of a video make a clip: TSN segment sampling by presentation time and fixed-stride sampling.

Samplers are built before the video is opened and called with the presentation time of every frame in the stream
(seconds, sorted), so `decode_clip` can read the stream first and never asks for a frame that is not there. Segment
sampling works in seconds, not frame numbers: on a variable-frame-rate clip (phones slow down in the dark, screen
recordings drop frames when nothing moves) frame numbers bunch where the rate is high, while times spread over the
clip. For a constant rate the two agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmpretrain.errors import ConfigError

SAMPLING_MODES = ("segment", "stride")


def frame_times(frames: np.ndarray | int) -> np.ndarray:
    """Presentation times as float64 seconds; an int `n` stands for n frames one second apart (constant rate).

    Raises:
        ValueError: no frames, or times that are not a sorted 1-D array.
    """
    times = np.arange(frames, dtype=np.float64) if np.ndim(frames) == 0 else np.asarray(frames, dtype=np.float64)
    if times.ndim != 1 or times.size < 1:
        raise ValueError(f"cannot sample from a video with {times.size} frames")
    if np.any(np.diff(times) < 0):
        raise ValueError("frame times must be sorted (presentation order)")
    return times


def _check(num_samples: int) -> None:
    if num_samples < 1:
        raise ValueError(f"number of frames to sample must be >= 1, got {num_samples}")


def _train_rng(train: bool, rng: np.random.Generator | None) -> np.random.Generator | None:
    return (rng if rng is not None else np.random.default_rng()) if train else None


def _clip_end(times: np.ndarray) -> float:
    """When the last frame stops being shown: its start plus the step before it (the local frame duration; on a
    variable-rate clip the overall median can be far shorter than the frames at the end)."""
    steps = np.diff(times)
    steps = steps[steps > 0]
    return float(times[-1] + (steps[-1] if steps.size else 1.0))


def shown_at(times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Index of the frame on screen at each time in `at`: the last frame that starts at or before it."""
    return np.clip(np.searchsorted(times, at, side="right") - 1, 0, len(times) - 1).astype(np.int64)


def segment_indices(
    frames: np.ndarray | int, num_segments: int, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """TSN sampling in time: split the clip's duration into `num_segments` equal spans and take one frame from each.

    The clip runs from the first frame's time to the end of the last frame. Evaluation takes the frame shown at
    the centre of each span; training takes the frame shown at a uniformly random time in it. A clip with fewer
    frames than segments repeats frames, still in order.

    Args:
        frames: every frame's presentation time in seconds (sorted), or a frame count for a constant rate.
        num_segments: frames to return.
        train: random time per segment when True, the centre when False (deterministic).
        rng: random source for training; a fresh unseeded one when None.

    Returns:
        int64 array of `num_segments` sorted frame indices.
    """
    _check(num_segments)
    times = frame_times(frames)
    rng = _train_rng(train, rng)
    start, end = times[0], _clip_end(times)
    offset = rng.random(num_segments) if rng is not None else 0.5
    at = start + (np.arange(num_segments) + offset) * (end - start) / num_segments
    return shown_at(times, at)


def stride_indices(
    frames: np.ndarray | int, num_samples: int, stride: int, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """`num_samples` frames `stride` frames apart: a random window when training, the centred one for evaluation.

    The stride counts decoded frames (a motion model's step), so only the number of frames is used. A video shorter
    than the window starts at frame 0 and repeats its last frame, so the clip keeps its length and order.

    Returns:
        int64 array of `num_samples` sorted frame indices.
    """
    _check(num_samples)
    num_frames = frame_times(frames).size
    if stride < 1:
        raise ConfigError(f"data.stride must be >= 1, got {stride}")
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
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from a video's frame times (seconds) to the `num_frames` indices to decode (`decode_clip`'s
    `sample`).

    Args:
        num_frames: clip length T.
        mode: "segment" (TSN, by time) or "stride" (data.sampling).
        stride: frame step for "stride".
        train: random sampling when True, deterministic when False.
        rng: random source for training.
    """
    if num_frames < 1:
        raise ConfigError(f"data.num_frames must be >= 1, got {num_frames}")
    if mode == "segment":
        return lambda times: segment_indices(times, num_frames, train=train, rng=rng)
    if mode == "stride":
        return lambda times: stride_indices(times, num_frames, stride, train=train, rng=rng)
    raise ConfigError(f"unknown data.sampling '{mode}'; choose from {', '.join(SAMPLING_MODES)}")
