"""Decoding backends on real files: PyAV reads what decord cannot (GIF, raw H.264, MPEG-TS), agrees
with decord where both can, and a per-video time limit turns a stuck decode into a skip."""
from __future__ import annotations

import threading

import av
import numpy as np
import pytest

from internvideo.data.decode import DecodeError, DecodeOptions, read_clip

FRAMES, SIZE = 12, 64


def bar_position(i: int) -> int:
    return (i * 5) % (SIZE - 8)


def write_video(path, container: str, codec: str, pix_fmt: str) -> None:
    """A white vertical bar moving right on black, one position per frame."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width = stream.height = SIZE
        stream.pix_fmt = pix_fmt
        for i in range(FRAMES):
            image = np.zeros((SIZE, SIZE, 3), np.uint8)
            image[:, bar_position(i):bar_position(i) + 8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


FORMATS = {"gif": ("gif", "gif", "rgb8"), "raw-h264": ("h264", "libx264", "yuv420p"),
           "mpeg-ts": ("mpegts", "libx264", "yuv420p")}


@pytest.mark.parametrize("name", FORMATS)
def test_files_decord_cannot_open_are_read_with_pyav(tmp_path, name):
    path = tmp_path / f"clip.{name}"
    write_video(path, *FORMATS[name])
    with pytest.raises(DecodeError) as refused:
        read_clip(str(path), lambda n: np.arange(4), DecodeOptions(fallback=False))
    assert refused.value.reason == "corrupt" and "decord" in str(refused.value)

    wanted = np.array([0, 3, 7, 11])
    frames = read_clip(str(path), lambda n: wanted)  # the default: decord, then PyAV
    assert frames.shape == (4, SIZE, SIZE, 3) and frames.dtype == np.uint8
    for frame, i in zip(frames, wanted):
        bright = np.flatnonzero(frame[SIZE // 2, :, 0] > 128)
        assert abs(int(np.median(bright)) - (bar_position(i) + 4)) <= 1, (name, i, bright)


def test_pyav_and_decord_read_the_same_frames_of_an_mp4(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, "mp4", "libx264", "yuv420p")
    indices = lambda n: np.array([1, 2, 5, 9, 11])  # noqa: E731
    by_decord = read_clip(str(path), indices).astype(np.int16)
    by_pyav = read_clip(str(path), indices, DecodeOptions(backend="pyav")).astype(np.int16)
    assert by_decord.shape == by_pyav.shape
    assert np.abs(by_decord - by_pyav).mean() < 2.0  # the same frames; RGB conversion may round apart


def test_a_file_no_backend_can_read_names_both_failures(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DecodeError) as failed:
        read_clip(str(path), lambda n: np.arange(4))
    assert failed.value.reason == "corrupt"
    assert "decord:" in failed.value.detail and "pyav:" in failed.value.detail


def test_a_decode_over_the_time_limit_is_a_timeout(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, "mp4", "libx264", "yuv420p")
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()

    def stuck(n: int) -> np.ndarray:  # runs inside the decode, as a stuck decoder would, until released
        entered.set()
        release.wait(timeout=60)  # bounded only so that a read_clip that never gives up fails, not hangs
        returned.set()
        return np.arange(4)

    try:
        with pytest.raises(DecodeError) as timed_out:
            read_clip(str(path), stuck, DecodeOptions(time_limit_s=0.3))
        assert timed_out.value.reason == "timeout"
        # The decode got as far as the stuck call and is still held there: read_clip gave up on it
        # rather than waiting it out.
        assert entered.wait(timeout=60) and not returned.is_set()
    finally:
        release.set()
    assert returned.wait(timeout=60)  # the abandoned decode finishes in the background once unstuck
    assert read_clip(str(path), lambda n: np.arange(4), DecodeOptions(time_limit_s=30)).shape[0] == 4


def test_pyav_decodes_from_the_keyframe_before_a_clip_not_from_the_start(tmp_path, monkeypatch):
    """A clip near the end of a video with a keyframe every 10 frames: PyAV seeks to the keyframe before
    it, decodes a dozen frames rather than 90, and returns the frames decord returns."""
    path = tmp_path / "long.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 10
        for i in range(100):
            image = np.zeros((SIZE, SIZE, 3), np.uint8)
            image[:, bar_position(i):bar_position(i) + 8] = 255
            image[:8, :8] = i * 2  # every frame its own
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    decoded = 0
    real_decode = av.container.InputContainer.decode

    def counting(self, *args, **kwargs):
        nonlocal decoded
        for frame in real_decode(self, *args, **kwargs):
            decoded += 1
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    wanted = lambda n: np.array([91, 93, 95, 97])  # noqa: E731
    by_pyav = read_clip(str(path), wanted, DecodeOptions(backend="pyav")).astype(np.int16)
    assert decoded <= 20
    by_decord = read_clip(str(path), wanted).astype(np.int16)
    assert np.abs(by_decord - by_pyav).mean() < 2.0
