"""Frame index sampling for dense clips (VideoMAE pretraining / Kinetics)."""

from __future__ import annotations

import numpy as np

__all__ = ["ClipTooShort", "dense_indices"]


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
