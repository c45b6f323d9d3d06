"""Clip decoding with decord (default) or PyAV, with every failure mapped to one exception type.

A decode worker must survive any file a dataset throws at it: each failure
becomes a :class:`DecodeError` whose ``reason`` comes from a fixed vocabulary,
so callers can count and skip bad samples without parsing messages.

decord is fast but opens fewer containers than FFmpeg can: GIFs, raw H.264 streams and MPEG-TS
files fail in it. Such a file is read again with PyAV (``fallback``), which demuxes once to
count frames and decodes only up to the last frame needed. ``time_limit_s`` bounds one video:
a decoder stuck on a pathological file is abandoned (its thread finishes in the background)
and the video counts as ``timeout``. ``short_side`` decodes a large video straight to a smaller
size (FFmpeg's scaler inside the decoder), which costs far less than decoding full frames and
shrinking them afterwards when the model's input is small.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from stat import S_ISDIR
from typing import Literal

import numpy as np

from internvideo.data.sampling import ClipTooShort

__all__ = ["DecodeError", "DecodeReason", "DECODE_REASONS", "DecodeOptions", "VideoInfo", "decode_size", "probe_video",
           "read_clip"]

DecodeReason = Literal["missing", "empty", "corrupt", "too_short", "timeout"]
DECODE_REASONS: tuple[str, ...] = ("missing", "empty", "corrupt", "too_short", "timeout")
Backend = Literal["decord", "pyav"]


@dataclass(frozen=True)
class DecodeOptions:
    backend: Backend = "decord"
    fallback: bool = True  # decord could not read the file: try PyAV
    time_limit_s: float | None = None  # per video; None: no limit
    num_threads: int = 1
    short_side: int | None = None  # decode larger videos scaled to this short side; None: full size

    def __post_init__(self) -> None:
        if self.short_side is not None and self.short_side < 2:
            raise ValueError(f"short_side must be >= 2, got {self.short_side}")


def decode_size(path: str, short_side: int | None, stat: os.stat_result | None = None) -> tuple[int, int] | None:
    """(height, width) to decode ``path`` at so that its short side is ``short_side`` (even sides,
    aspect kept), or None to decode at full size: no target, a video already that small, or a
    header PyAV cannot read (the decoder then reports the file itself). ``stat``: the file's, if
    the caller has it already."""
    if short_side is None:
        return None
    stat = stat or os.stat(path)
    frame = _frame_size(path, stat.st_size, stat.st_mtime_ns)
    if frame is None or min(frame) <= short_side:
        return None
    height, width = frame
    scale = short_side / min(height, width)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


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


@functools.lru_cache(maxsize=1 << 18)
def _frame_size(path: str, nbytes: int, mtime_ns: int) -> tuple[int, int] | None:
    """(height, width) from the header, read once per version of a file: opening a container costs
    about as much as decoding a small clip, and a dataset is read many epochs over."""
    import av

    try:
        with av.open(path) as container:
            context = container.streams.video[0].codec_context
            return context.height, context.width
    except (av.error.FFmpegError, IndexError, OSError):
        return None


def _to_numpy(batch: object) -> np.ndarray:
    # decord's return type depends on its process-global bridge setting, which
    # other code may have changed; accept every form rather than touch it.
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


def read_clip(path: str, indices_fn: Callable[[int], np.ndarray], options: DecodeOptions = DecodeOptions()
              ) -> np.ndarray:
    """Decode the frames ``indices_fn(len(video))`` chooses from ``path``.

    Returns:
        uint8 array (T, H, W, 3), RGB, T = ``len(indices_fn(...))``.

    Raises:
        DecodeError: ``missing`` (no such file), ``empty`` (0 bytes, or no frames), ``corrupt``
            (no backend can open it — truncated, no video track — or reading a frame fails, or
            frames come back in the wrong shape), ``too_short`` (``indices_fn`` raised
            :class:`ClipTooShort`), ``timeout`` (over ``options.time_limit_s``).
    """
    path = str(path)
    stat = _existing_file(path)  # once per clip: existence, type, size and the frame-size cache key
    size = decode_size(path, options.short_side, stat)
    backends = [options.backend] + (["pyav"] if options.fallback and options.backend == "decord" else [])
    failures = []
    for backend in backends:
        reader = _read_decord if backend == "decord" else _read_pyav
        try:
            frames = _within(options.time_limit_s, path, lambda: reader(path, indices_fn, options.num_threads, size))
        except DecodeError as e:
            if e.reason != "corrupt":
                raise
            failures.append(f"{backend}: {e.detail}")
            continue
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise DecodeError(path, "corrupt", f"unexpected frame batch shape {frames.shape}")
        return np.ascontiguousarray(frames, dtype=np.uint8)  # (T, H, W, 3)
    raise DecodeError(path, "corrupt", "; ".join(failures))


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float


def probe_video(path: str, options: DecodeOptions = DecodeOptions()) -> VideoInfo:
    """A video's frame count and frame rate, decoding no frame (decord, else PyAV when
    ``options.fallback``). Raises DecodeError as :func:`read_clip` does."""
    path = str(path)
    _existing_file(path)
    backends = [options.backend] + (["pyav"] if options.fallback and options.backend == "decord" else [])
    failures = []
    for backend in backends:
        try:
            info = _within(options.time_limit_s, path, lambda: _probe_decord(path) if backend == "decord"
                           else _probe_pyav(path))
        except DecodeError as e:
            if e.reason != "corrupt":
                raise
            failures.append(f"{backend}: {e.detail}")
            continue
        if info.num_frames <= 0:
            raise DecodeError(path, "empty", "video has no frames")
        if not info.fps > 0:
            raise DecodeError(path, "corrupt", "no frame rate")
        return info
    raise DecodeError(path, "corrupt", "; ".join(failures))


def _probe_decord(path: str) -> VideoInfo:
    from decord import VideoReader

    try:
        reader = VideoReader(path, num_threads=1)
        return VideoInfo(len(reader), float(reader.get_avg_fps()))
    except Exception as e:  # decord raises RuntimeError or DECORDError
        raise DecodeError(path, "corrupt", f"open failed: {type(e).__name__}: {e}") from e


def _probe_pyav(path: str) -> VideoInfo:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DecodeError(path, "corrupt", "no video stream")
            rate = container.streams.video[0].average_rate
            frames = sum(1 for packet in container.demux(video=0) if packet.size)
    except (av.error.FFmpegError, av.error.ArgumentError, OSError) as e:
        raise DecodeError(path, "corrupt", f"open failed: {type(e).__name__}: {e}") from e
    return VideoInfo(frames, float(rate) if rate else 0.0)


def _existing_file(path: str) -> os.stat_result:
    # Checked before decoding: decord's own message for these cases is a generic "Error reading" that
    # cannot be told apart from a corrupt file.
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise DecodeError(path, "missing", "no such file") from None
    except OSError as e:
        raise DecodeError(path, "missing", str(e)) from None
    if S_ISDIR(stat.st_mode):
        raise DecodeError(path, "missing", "is a directory")
    if stat.st_size == 0:
        raise DecodeError(path, "empty", "0-byte file")
    return stat


def _within(seconds: float | None, path: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()``, or DecodeError("timeout") after ``seconds`` (the read is left to finish alone:
    a decoder inside FFmpeg cannot be interrupted)."""
    if seconds is None:
        return read()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["frames"] = read()
        except BaseException as e:  # noqa: BLE001 — handed to the caller below
            outcome["error"] = e

    worker = threading.Thread(target=run, name=f"decode {os.path.basename(path)}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DecodeError(path, "timeout", f"not decoded within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["frames"]


def _indices(path: str, indices_fn: Callable[[int], np.ndarray], n: int) -> np.ndarray:
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
    return indices


def _read_decord(path: str, indices_fn: Callable[[int], np.ndarray], num_threads: int,
                 size: tuple[int, int] | None) -> np.ndarray:
    # Imported lazily so that importing this module (e.g. on a trainer without decord) stays cheap.
    from decord import VideoReader

    try:
        height, width = size or (-1, -1)
        vr = VideoReader(path, num_threads=num_threads, width=width, height=height)
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
        indices = _indices(path, indices_fn, n)
        try:
            frames = _to_numpy(vr.get_batch(indices.tolist()))
        except Exception as e:
            raise DecodeError(path, "corrupt", f"frame read failed: {type(e).__name__}: {e}") from e
    finally:
        del vr  # release the demuxer/decoder threads now, not at some later GC
    if frames.shape[0] != indices.size:
        raise DecodeError(path, "corrupt", f"asked for {indices.size} frames, got {frames.shape[0]}")
    return frames


def _read_pyav(path: str, indices_fn: Callable[[int], np.ndarray], num_threads: int,
               size: tuple[int, int] | None) -> np.ndarray:
    import av

    failures = (av.error.FFmpegError, av.error.ArgumentError, OSError)
    try:
        with av.open(path) as container:  # pass 1: the frames' timestamps and keyframes, decoding nothing
            if not container.streams.video:
                raise DecodeError(path, "corrupt", "no video stream")
            packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(video=0) if packet.size]
    except failures as e:
        raise DecodeError(path, "corrupt", f"open failed: {type(e).__name__}: {e}") from e
    indices = _indices(path, indices_fn, len(packets))
    wanted, last = set(indices.tolist()), int(indices.max())
    got: dict[int, np.ndarray] = {}
    scaled = {"height": size[0], "width": size[1]} if size else {}
    try:
        with av.open(path) as container:  # pass 2: decode from the keyframe before the first frame needed
            stream = container.streams.video[0]
            stream.thread_count = num_threads
            for i, frame in _frames_from_keyframe(container, stream, packets, int(indices.min())):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24", **scaled)
                if i >= last:
                    break
    except failures as e:
        raise DecodeError(path, "corrupt", f"frame read failed: {type(e).__name__}: {e}") from e
    if len(got) != len(wanted):
        raise DecodeError(path, "corrupt", f"{len(packets)} packets but only {len(got)} of the {len(wanted)} "
                                           "frames decoded")
    return np.stack([got[i] for i in indices.tolist()])


def _frames_from_keyframe(container, stream, packets: list[tuple[int | None, bool]], first: int):
    """``(index, frame)`` in display order from the keyframe at or before frame ``first``: the frames'
    timestamps, sorted, give each its index. A stream without a timestamp for each frame (a raw H.264
    file) is decoded from its start, its frames counted."""
    timestamps = sorted(pts for pts, _ in packets if pts is not None)
    if len(set(timestamps)) != len(packets):  # missing or repeated timestamps: count the frames instead
        yield from enumerate(container.decode(stream))
        return
    keyframe = max((pts for pts, key in packets if key and pts <= timestamps[first]), default=timestamps[0])
    index_of = {pts: i for i, pts in enumerate(timestamps)}
    if keyframe > timestamps[0]:
        container.seek(keyframe, stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.pts in index_of:  # frames before the keyframe (an open GOP's leading ones) are not needed
            yield index_of[frame.pts], frame
