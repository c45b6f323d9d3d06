"""Frame index samplers: dense clips (VideoMAE / Kinetics), one frame per segment (TSN / SSv2),
and the evenly spaced clips of multi-view testing.

A sampler is ``f(num_video_frames) -> indices``; training samplers draw from an explicit
``np.random.Generator`` so a clip is a function of its seed in any process, and test samplers
are deterministic.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClipTooShort", "dense_indices", "segment_indices", "spread_clip_starts", "dense_view_indices"]


class ClipTooShort(ValueError):
    """The video has fewer frames than the clip needs.

    ``decode.read_clip`` turns it into ``DecodeError(reason="too_short")``.
    """


def dense_indices(
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """Pick ``num_frames`` frame indices, ``sampling_rate`` apart, from one window.

    The window spans ``(num_frames - 1) * sampling_rate + 1`` frames. Its start is
    uniform over every valid position when ``rng`` is given (training) and the
    centre of the video when ``rng`` is None (evaluation). A video shorter than
    the window but with at least ``num_frames`` frames is covered by evenly
    spaced, still distinct, indices over its whole length.

    Returns:
        int64 array of shape (num_frames,), non-decreasing, in [0, num_video_frames).

    Raises:
        ClipTooShort: ``num_video_frames < num_frames``.
        ValueError: ``num_frames`` or ``sampling_rate`` below 1.
    """
    if num_frames < 1 or sampling_rate < 1:
        raise ValueError(f"num_frames={num_frames} and sampling_rate={sampling_rate} must be >= 1")
    n = int(num_video_frames)
    if n < num_frames:
        raise ClipTooShort(f"video has {n} frames, clip needs {num_frames}")
    span = (num_frames - 1) * sampling_rate + 1
    if n < span:
        # Step (n-1)/(num_frames-1) >= 1 here, so rounding keeps indices distinct.
        return np.rint(np.linspace(0, n - 1, num_frames)).astype(np.int64)
    if rng is None:
        start = (n - span) // 2
    else:
        start = int(rng.integers(0, n - span + 1))
    return start + np.arange(num_frames, dtype=np.int64) * sampling_rate


def segment_indices(num_video_frames: int, num_segments: int, rng: np.random.Generator | None) -> np.ndarray:
    """One frame from each of ``num_segments`` equal segments of the whole video (TSN sampling,
    as VideoMAE fine-tunes Something-Something): uniform inside its segment when ``rng`` is given
    (training), the segment's middle frame when it is None (test).

    Returns:
        int64 array of shape (num_segments,), strictly increasing, in [0, num_video_frames).

    Raises:
        ClipTooShort: ``num_video_frames < num_segments``.
    """
    if num_segments < 1:
        raise ValueError(f"num_segments={num_segments} must be >= 1")
    n = int(num_video_frames)
    if n < num_segments:
        raise ClipTooShort(f"video has {n} frames, {num_segments} segments need one each")
    bounds = np.linspace(0, n, num_segments + 1)  # segment k is [bounds[k], bounds[k+1])
    lo = np.ceil(bounds[:-1]).astype(np.int64)
    hi = np.maximum(lo + 1, np.ceil(bounds[1:]).astype(np.int64))  # exclusive, >= 1 frame each
    if rng is None:
        return (lo + hi - 1) // 2
    return lo + (rng.random(num_segments) * (hi - lo)).astype(np.int64)


def spread_clip_starts(num_video_frames: int, span: int, num_clips: int) -> np.ndarray:
    """First frames of ``num_clips`` windows of ``span`` frames spread evenly over the video, the
    first at its start and the last at its end (one clip: the centre), as multi-view testing does."""
    if num_clips < 1 or span < 1:
        raise ValueError(f"num_clips={num_clips} and span={span} must be >= 1")
    room = max(0, int(num_video_frames) - span)
    if num_clips == 1:
        return np.array([room // 2], dtype=np.int64)
    return np.rint(np.linspace(0, room, num_clips)).astype(np.int64)


def dense_view_indices(num_video_frames: int, num_frames: int, sampling_rate: int, num_clips: int) -> np.ndarray:
    """Frame indices of ``num_clips`` dense test clips, shape (num_clips, num_frames). A video shorter
    than one window gives the same evenly spaced clip each time (see :func:`dense_indices`)."""
    n = int(num_video_frames)
    span = (num_frames - 1) * sampling_rate + 1
    if n < span:
        return np.tile(dense_indices(n, num_frames, sampling_rate, None), (num_clips, 1))
    offsets = np.arange(num_frames, dtype=np.int64) * sampling_rate
    return spread_clip_starts(n, span, num_clips)[:, None] + offsets[None, :]
