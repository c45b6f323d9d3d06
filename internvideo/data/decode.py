"""Clip decoding with decord, with every failure mapped to one exception type.

A decode worker must survive any file a dataset throws at it: each failure
becomes a :class:`DecodeError` whose ``reason`` comes from a fixed vocabulary,
so callers can count and skip bad samples without parsing messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import numpy as np

from internvideo.data.sampling import ClipTooShort

__all__ = ["DecodeError", "DecodeReason", "DECODE_REASONS", "read_clip"]

DecodeReason = Literal["missing", "empty", "corrupt", "too_short"]
DECODE_REASONS: tuple[str, ...] = ("missing", "empty", "corrupt", "too_short")


class DecodeError(Exception):
    """A video could not be turned into a clip.

    Attributes:
        path: the video file.
        reason: one of ``DECODE_REASONS``.
    """

    def __init__(self, path: str, reason: DecodeReason, detail: str = "") -> None:
        if reason not in DECODE_REASONS:
            raise ValueError(f"unknown decode reason {reason!r}")
        self.path = str(path)
        self.reason: DecodeReason = reason
        self.detail = detail
        msg = f"{reason}: {self.path}"
        super().__init__(f"{msg}: {detail}" if detail else msg)

    def __reduce__(self):  # keep path/reason when pickled across processes (Ray)
        return (type(self), (self.path, self.reason, self.detail))


def _to_numpy(batch: object) -> np.ndarray:
    # decord's return type depends on its process-global bridge setting, which
    # other code may have changed; accept every form rather than touch it.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def read_clip(
    path: str,
    indices_fn: Callable[[int], np.ndarray],
    num_threads: int = 1,
) -> np.ndarray:
    """Decode the frames ``indices_fn(len(video))`` chooses from ``path``.

    Returns:
        uint8 array (T, H, W, 3), RGB, T = ``len(indices_fn(...))``.

    Raises:
        DecodeError: ``missing`` (no such file), ``empty`` (0 bytes, or decord opens it
            and counts 0 frames), ``corrupt`` (decord cannot open it, which includes
            truncated files and a container without a video track, or fails reading
            a frame, or returns frames of the wrong shape), ``too_short``
            (``indices_fn`` raised :class:`ClipTooShort`).
    """
    path = str(path)
    # Check before decord: its own message for these cases is a generic
    # "Error reading" that cannot be told apart from a corrupt file.
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DecodeError(path, "missing", "no such file") from None
    except OSError as e:
        raise DecodeError(path, "missing", str(e)) from None
    if os.path.isdir(path):
        raise DecodeError(path, "missing", "is a directory")
    if size == 0:
        raise DecodeError(path, "empty", "0-byte file")

    # Imported lazily so that importing this module (e.g. on a trainer without
    # decord) stays cheap.
    from decord import VideoReader

    try:
        vr = VideoReader(path, num_threads=num_threads)
    except Exception as e:  # decord raises RuntimeError or DECORDError
        # Always "corrupt", even for a zero-frame mp4: the muxer drops a track that
        # got no frames, and decord's error for that ("cannot find video stream")
        # is the same as for a file cut inside its index, so they can't be told apart.
        raise DecodeError(path, "corrupt", f"open failed: {type(e).__name__}: {e}") from e
    try:
        try:
            n = len(vr)
        except Exception as e:
            raise DecodeError(path, "corrupt", f"frame count failed: {type(e).__name__}: {e}") from e
        if n <= 0:
            raise DecodeError(path, "empty", "video has no frames")
        try:
            indices = np.asarray(indices_fn(n), dtype=np.int64).reshape(-1)
        except ClipTooShort as e:
            raise DecodeError(path, "too_short", str(e)) from e
        if indices.size == 0:
            raise ValueError("indices_fn returned no frame indices")
        if indices.min() < 0 or indices.max() >= n:
            # A sampler bug, not a bad file: let it surface.
            raise IndexError(f"frame indices out of range [0, {n}): {indices.tolist()}")
        try:
            frames = _to_numpy(vr.get_batch(indices.tolist()))
        except Exception as e:
            raise DecodeError(path, "corrupt", f"frame read failed: {type(e).__name__}: {e}") from e
    finally:
        del vr  # release the demuxer/decoder threads now, not at some later GC
    if frames.ndim != 4 or frames.shape[0] != indices.size or frames.shape[-1] != 3:
        raise DecodeError(path, "corrupt", f"unexpected frame batch shape {frames.shape}")
    # (T, H, W, 3) uint8
    return np.ascontiguousarray(frames, dtype=np.uint8)
