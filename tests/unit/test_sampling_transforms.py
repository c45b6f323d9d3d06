"""Samplers beyond dense, the crops and flip of fine-tuning, CLIP normalisation, reduced-size decoding,
dataset sources for jobs, and the untrimmed synthetic set: on real files where files are involved."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from internvideo.data.decode import DecodeOptions, decode_size, read_clip
from internvideo.data.formats import VideoSource, read_activitynet
from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import PretrainClipSpec, load_pretrain_clip
from internvideo.data.sampling import ClipTooShort, dense_view_indices, segment_indices, spread_clip_starts
from internvideo.data.synthetic import CLASSES, render_video, write_mp4, write_untrimmed_dataset
from internvideo.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    maybe_flip,
    normalize_clips,
    random_resized_crop,
    random_resized_crop_params,
    spatial_views,
)
from internvideo.tasks.common import DataSection


def test_segment_indices_one_frame_per_segment():
    for n, k in [(100, 8), (8, 8), (17, 4), (9, 8)]:
        middle = segment_indices(n, k, None)
        bounds = np.linspace(0, n, k + 1)
        assert middle.shape == (k,) and np.all(np.diff(middle) > 0)
        assert np.all(middle >= np.floor(bounds[:-1])) and np.all(middle < np.ceil(bounds[1:]))
        rng = np.random.default_rng(0)
        draws = np.stack([segment_indices(n, k, rng) for _ in range(200)])
        assert np.all(np.diff(draws, axis=1) > 0) and draws.min() >= 0 and draws.max() < n
        for s in range(k):  # every frame of a segment is drawn, and only those
            assert set(draws[:, s].tolist()) == set(range(int(np.ceil(bounds[s])), int(np.ceil(bounds[s + 1]))))
    assert segment_indices(100, 4, None).tolist() == [12, 37, 62, 87]
    with pytest.raises(ClipTooShort):
        segment_indices(3, 4, None)


def test_multi_view_clips_cover_the_video_evenly():
    assert spread_clip_starts(100, 31, 1).tolist() == [34]
    assert spread_clip_starts(100, 31, 3).tolist() == [0, 34, 69]  # last clip ends on the last frame
    views = dense_view_indices(100, 16, 2, 5)
    assert views.shape == (5, 16) and views[0, 0] == 0 and views[-1, -1] == 99
    assert np.all(np.diff(views, axis=1) == 2)
    short = dense_view_indices(20, 16, 2, 3)  # shorter than a window: the same spread clip each time
    assert np.all(short == short[0]) and short[0, 0] == 0 and short[0, -1] == 19


def test_random_resized_crop_draws_within_bounds_and_is_deterministic():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_params(90, 160, rng)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
        # Sides are rounded to whole pixels: area and ratio may stray by that rounding (< 3 %) only.
        assert 0.08 * 90 * 160 * 0.97 <= h * w <= 90 * 160 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    # An impossible ratio falls back to the largest centred box in range.
    assert random_resized_crop_params(10, 200, np.random.default_rng(0), ratio=(1.0, 1.0), attempts=0) == (0, 95, 10, 10)
    clip = np.random.default_rng(1).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)
    a = random_resized_crop(clip, 32, np.random.default_rng([5, 0, 1]))
    b = random_resized_crop(clip, 32, np.random.default_rng([5, 0, 1]))
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_flip_mirrors_half_the_time_and_draws_nothing_when_off():
    clip = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    rng = np.random.default_rng(0)
    flips = [not np.array_equal(maybe_flip(clip, rng, True), clip) for _ in range(400)]
    assert 150 < sum(flips) < 250
    flipped = next(out for out in (maybe_flip(clip, rng, True) for _ in range(20)) if not np.array_equal(out, clip))
    assert np.array_equal(flipped, clip[:, :, ::-1])
    off, untouched = np.random.default_rng(3), np.random.default_rng(3)
    assert maybe_flip(clip, off, False) is clip
    assert off.random() == untouched.random()  # the sample stream of direction-sensitive data is unchanged


def test_spatial_views_span_the_long_side():
    frames, _ = render_video("move_right", 2, 64, np.random.default_rng(0))
    wide = np.concatenate([frames, frames[:, :, :32]], axis=2)  # (2, 64, 96, 3)
    views = spatial_views(wide, 32, 3)  # short side 64 -> 32, long side 96 -> 48
    assert views.shape == (3, 2, 32, 32, 3)
    assert not np.array_equal(views[0], views[2])
    tall = np.ascontiguousarray(wide.transpose(0, 2, 1, 3))
    assert spatial_views(tall, 32, 3).shape == (3, 2, 32, 32, 3)
    assert spatial_views(wide, 32, 1).shape == (1, 2, 32, 32, 3)


def test_clip_normalisation():
    batch = torch.full((1, 1, 2, 2, 3), 255, dtype=torch.uint8)
    out = normalize_clips(batch, "clip")
    assert out.shape == (1, 3, 1, 2, 2)
    assert torch.allclose(out[0, :, 0, 0, 0], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_clips(batch, "kinetics")


@pytest.fixture(scope="module")
def large_video(tmp_path_factory):
    frames = np.zeros((12, 240, 320, 3), dtype=np.uint8)
    frames[:, :, 160:] = 200  # right half bright
    path = tmp_path_factory.mktemp("large") / "v.mp4"
    write_mp4(path, frames)
    return path


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decoding_at_reduced_size(large_video, backend):
    assert decode_size(str(large_video), 120) == (120, 160)
    assert decode_size(str(large_video), 240) is None and decode_size(str(large_video), None) is None
    clip = read_clip(str(large_video), lambda n: np.arange(4), DecodeOptions(backend=backend, short_side=120))
    assert clip.shape == (4, 120, 160, 3)
    assert clip[:, :, :75].mean() < 10 and clip[:, :, 85:].mean() > 190  # the picture, scaled
    full = read_clip(str(large_video), lambda n: np.arange(4), DecodeOptions(backend=backend))
    assert full.shape == (4, 240, 320, 3)


def test_clip_spec_options_change_the_clip_and_stay_pure(tmp_path):
    frames, _ = render_video("move_right", 24, 64, np.random.default_rng(0))
    write_mp4(tmp_path / "v.mp4", frames)
    record = VideoRecord(str(tmp_path / "v.mp4"), 1)
    base = dict(num_frames=8, sampling_rate=2, input_size=32, patch_size=16, tubelet_size=2, mask_ratio=0.5, seed=0)
    clips = {}
    for name, extra in {"dense": {}, "segment": {"sampler": "segment"}, "rrc": {"crop": "random_resized"},
                        "flip": {"flip": True}}.items():
        spec = PretrainClipSpec(**base, **extra)
        clips[name] = load_pretrain_clip(record, spec, epoch=0, sample_id=3)
        again = load_pretrain_clip(record, spec, epoch=0, sample_id=3)
        assert np.array_equal(clips[name].video, again.video) and np.array_equal(clips[name].mask, again.mask)
    assert not np.array_equal(clips["dense"].video, clips["segment"].video)
    assert not np.array_equal(clips["dense"].video, clips["rrc"].video)


def test_data_section_validates_sources_and_pool_bounds(tmp_path):
    with pytest.raises(ValueError, match="needs a labels file"):
        DataSection(train_list="train.json", format="ssv2")
    with pytest.raises(ValueError, match="only format 'activitynet' takes a subset"):
        DataSection(train_list="train.txt", subset="training")
    with pytest.raises(ValueError, match="decode_workers_max"):
        DataSection(train_list="train.txt", decode_workers=3, decode_workers_max=2)
    with pytest.raises(ValueError, match="decode_short_side"):
        DataSection(train_list="train.txt", decode_short_side=1)
    assert DataSection(train_list="t.txt", decode_workers=2).max_decode_workers == 2
    assert DataSection(train_list="t.txt", decode_cpus=4).threads_per_decode_worker == 4
    assert DataSection(train_list="t.txt", decode_cpus=0.5).threads_per_decode_worker == 1
    assert DataSection(train_list="t.txt", decode_cpus=4, decode_threads=2).threads_per_decode_worker == 2


def test_decode_short_side_auto_is_videomae_256_for_224():
    data = DataSection(train_list="t.txt")
    assert data.decode_short_side == "auto"
    assert data.decode_options(224).short_side == 256 and data.decode_options(64).short_side == 74
    assert DataSection(train_list="t.txt", decode_short_side="full").decode_options(224).short_side is None
    assert DataSection(train_list="t.txt", decode_short_side=300).decode_options(224).short_side == 300
    options = DataSection(train_list="t.txt", decode_backend="pyav", video_time_limit_s=5).decode_options(224)
    assert (options.backend, options.fallback, options.time_limit_s) == ("pyav", True, 5)


def test_untrimmed_synthetic_videos_match_their_activitynet_annotations(tmp_path):
    annotation = write_untrimmed_dataset(tmp_path, num_videos=4, seed=5)
    videos = read_activitynet(annotation)
    again = json.loads(write_untrimmed_dataset(tmp_path / "again", num_videos=4, seed=5).read_text())
    assert json.loads(annotation.read_text())["database"] == again["database"]  # reproducible from the seed
    assert {v.subset for v in videos} == {"training", "validation"}
    for video in videos:
        clip = read_clip(video.path, lambda n: np.arange(n))
        assert len(clip) == round(video.duration * 8)
        assert 2 <= len(video.segments) <= 4 and all(s.label in CLASSES for s in video.segments)
        motion = np.abs(np.diff(clip.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))  # (T-1,)
        inside = np.zeros(len(clip) - 1, dtype=bool)
        for s in video.segments:
            inside[round(s.start * 8) : round(s.end * 8) - 1] = True
        # Idle gaps hold a frame still (only a cut into a new segment moves there); actions move.
        assert np.median(motion[~inside]) < 0.5 < np.median(motion[inside])
    records = VideoSource("activitynet", str(annotation), subset="training").read()
    assert len(records) == sum(v.subset == "training" for v in videos)
