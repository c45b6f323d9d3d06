"""Video data path: lists, decoding, sampling, transforms, masking, synthetic data.

Everything runs on real H.264 files written into tmp dirs; decord reads them.
"""

from __future__ import annotations

import csv
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from internvideo.data.decode import DecodeError, read_clip
from internvideo.data.formats import read_video_text
from internvideo.data.lists import VideoRecord, read_video_list, write_video_list
from internvideo.data.masking import num_masked_tokens, tube_mask
from internvideo.data.pipeline import PretrainClipSpec, load_pretrain_clip
from internvideo.data.sampling import ClipTooShort, dense_indices
from internvideo.data.synthetic import (
    CLASSES,
    render_video,
    write_mp4,
    write_synthetic_dataset,
)
from internvideo.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop_resize,
    multi_scale_crop,
    multi_scale_crop_params,
    normalize_clips,
    renormalize_clips,
    resize_clip,
)

SPEC = PretrainClipSpec(
    num_frames=8, sampling_rate=2, input_size=48, patch_size=8, tubelet_size=2, mask_ratio=0.9, seed=7
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=3)


@pytest.fixture(scope="module")
def one_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 32-frame 64x64 mp4 (index at the end, as the mp4 muxer writes by default)."""
    frames, _ = render_video("move_right", 32, 64, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("one") / "v.mp4"
    write_mp4(path, frames)
    return path, frames


def _decode_all(path) -> np.ndarray:
    return read_clip(str(path), lambda n: np.arange(n))


def _reason(path, indices_fn=lambda n: np.arange(n)) -> str:
    with pytest.raises(DecodeError) as info:
        read_clip(str(path), indices_fn)
    assert info.value.path == str(path)
    return info.value.reason


# ---------------------------------------------------------------- synthetic data


def test_synthetic_videos_decode_with_right_shape(dataset):
    records = read_video_list(dataset.train_list) + read_video_list(dataset.val_list)
    assert len(records) == 64
    assert sorted(Path(r.path).name for r in records) == [f"{i:06d}.mp4" for i in range(64)]
    for rec in records:
        clip = _decode_all(rec.path)
        assert clip.shape == (32, 64, 64, 3) and clip.dtype == np.uint8
        assert rec.label == int(Path(rec.path).stem) % 8


def test_synthetic_classes_balanced_and_files_well_formed(dataset):
    train = read_video_list(dataset.train_list)
    val = read_video_list(dataset.val_list)
    assert np.bincount([r.label for r in train], minlength=8).tolist() == [6] * 8
    assert np.bincount([r.label for r in val], minlength=8).tolist() == [2] * 8
    assert not {r.path for r in train} & {r.path for r in val}
    for line in dataset.train_list.read_text().splitlines():
        assert re.fullmatch(r"videos/\d{6}\.mp4 [0-7]", line)
    assert dataset.classes_txt.read_text().splitlines() == list(CLASSES) == list(dataset.classes)
    with open(dataset.captions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and rows[0]["video"] == "videos/000000.mp4"
    train_captions = read_video_text(dataset.train_captions)
    assert {v.path for v in train_captions} == {r.path for r in read_video_list(dataset.train_list)}
    assert {v.path for v in read_video_text(dataset.val_captions)} == {r.path for r in val}
    for row in rows:
        label = int(Path(row["video"]).stem) % 8
        words = {"move_left": "left", "move_right": "right", "move_up": "up", "move_down": "down",
                 "grow": "grows", "shrink": "shrinks", "fade_in": "in", "fade_out": "out"}
        assert row["caption"].split()[-1] == words[CLASSES[label]]


def test_synthetic_decoded_pixels_match_render(dataset):
    # H.264 at crf 18 on smooth content: close to the rendered frames on average.
    frames, _ = render_video(CLASSES[5], 32, 64, np.random.default_rng([3, 0, 5]))
    decoded = _decode_all(dataset.root / "videos/000005.mp4")
    assert np.abs(decoded.astype(int) - frames).mean() < 4


def test_synthetic_pairs_differ_only_by_time_order():
    # A rendered move_left reversed in time is a move_right along the same path.
    left, _ = render_video("move_left", 16, 64, np.random.default_rng([1, 2]))
    right, _ = render_video("move_right", 16, 64, np.random.default_rng([1, 2]))
    np.testing.assert_array_equal(left[::-1], right)
    grow, _ = render_video("grow", 16, 64, np.random.default_rng(9))
    shrink, _ = render_video("shrink", 16, 64, np.random.default_rng(9))
    np.testing.assert_array_equal(grow[::-1], shrink)


def test_synthetic_reproducible_from_seed(dataset, tmp_path):
    again = write_synthetic_dataset(tmp_path / "again", seed=3)
    for name in ("train.txt", "val.txt", "captions.csv"):
        assert (again.root / name).read_text() == (dataset.root / name).read_text()
    for i in (0, 13, 63):
        rel = f"videos/{i:06d}.mp4"
        np.testing.assert_array_equal(_decode_all(again.root / rel), _decode_all(dataset.root / rel))
    other = write_synthetic_dataset(tmp_path / "other", num_videos=8, seed=4)
    assert not np.array_equal(
        _decode_all(other.root / "videos/000000.mp4"), _decode_all(dataset.root / "videos/000000.mp4")
    )


# ---------------------------------------------------------------- lists


def test_list_round_trip(tmp_path):
    recs = [VideoRecord("videos/a.mp4", 3), VideoRecord("b/c.mp4", 0), VideoRecord("/abs/d.mp4", 11)]
    write_video_list(tmp_path / "l.txt", recs)
    assert (tmp_path / "l.txt").read_text().splitlines()[0] == "videos/a.mp4 3"
    back = read_video_list(tmp_path / "l.txt")
    assert back == [
        VideoRecord(str(tmp_path / "videos/a.mp4"), 3),
        VideoRecord(str(tmp_path / "b/c.mp4"), 0),
        VideoRecord("/abs/d.mp4", 11),
    ]
    assert read_video_list(tmp_path / "l.txt", root="/data")[0] == VideoRecord("/data/videos/a.mp4", 3)


def test_list_comma_separator_and_blank_lines(tmp_path):
    (tmp_path / "l.csv").write_text("\nx/1.mp4,5\n\n  x/2.mp4 , 6  \nx/3.mp4\t7\n\n")
    recs = read_video_list(tmp_path / "l.csv", root=tmp_path)
    assert [(Path(r.path).name, r.label) for r in recs] == [("1.mp4", 5), ("2.mp4", 6), ("3.mp4", 7)]


@pytest.mark.parametrize("bad", ["videos/c.mp4", "videos/c.mp4 x", "videos/c.mp4 1 2", "a.mp4,1,2"])
def test_list_malformed_line_names_file_and_line(tmp_path, bad):
    (tmp_path / "list.txt").write_text(f"videos/a.mp4 1\n\n{bad}\nvideos/d.mp4 2\n")
    with pytest.raises(ValueError, match=r"list\.txt:3"):
        read_video_list(tmp_path / "list.txt")


def test_list_empty_raises(tmp_path):
    (tmp_path / "e.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        read_video_list(tmp_path / "e.txt")


def test_list_writer_rejects_unsplittable_paths(tmp_path):
    with pytest.raises(ValueError):
        write_video_list(tmp_path / "l.txt", [VideoRecord("my video.mp4", 1)])


# ---------------------------------------------------------------- sampling


def test_dense_indices_train_eval_and_short():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        idx = dense_indices(40, 8, 4, rng)  # span 29 -> start in [0, 11]
        assert idx.dtype == np.int64 and np.all(np.diff(idx) == 4)
        starts.add(int(idx[0]))
    assert starts == set(range(12))
    np.testing.assert_array_equal(dense_indices(40, 8, 4, None), 5 + 4 * np.arange(8))
    # Shorter than the span: even spread over the whole video, still distinct.
    short = dense_indices(20, 8, 4, rng)
    assert short[0] == 0 and short[-1] == 19 and len(set(short.tolist())) == 8
    np.testing.assert_array_equal(dense_indices(8, 8, 4, None), np.arange(8))
    with pytest.raises(ClipTooShort):
        dense_indices(7, 8, 4, rng)


# ---------------------------------------------------------------- decoding


def test_read_clip_returns_the_requested_frames(one_video):
    path, _ = one_video
    everything = _decode_all(path)
    idx = np.array([30, 2, 17, 17, 5])
    np.testing.assert_array_equal(read_clip(str(path), lambda n: idx), everything[idx])


def test_decode_missing_empty_garbage(tmp_path):
    assert _reason(tmp_path / "nope.mp4") == "missing"
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert _reason(tmp_path / "empty.mp4") == "empty"
    junk = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    (tmp_path / "junk.mp4").write_bytes(junk)
    assert _reason(tmp_path / "junk.mp4") == "corrupt"


def test_decode_truncated_is_corrupt(tmp_path, one_video):
    path, frames = one_video
    # Default mp4 layout keeps the index (moov) at the end: half a file has none,
    # decord cannot open it.
    data = path.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "half.mp4") == "corrupt"
    # With the index first, decord opens a half file but fails on the first read.
    write_mp4(tmp_path / "fs.mp4", frames, faststart=True)
    data = (tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "fs_half.mp4").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "fs_half.mp4") == "corrupt"
    # Only the last frame's bytes lost: early frames still decode, the last is corrupt.
    (tmp_path / "fs_tail.mp4").write_bytes(data[:-5])
    assert read_clip(str(tmp_path / "fs_tail.mp4"), lambda n: np.arange(4)).shape == (4, 64, 64, 3)
    assert _reason(tmp_path / "fs_tail.mp4", lambda n: np.arange(n)) == "corrupt"


@pytest.mark.parametrize("faststart", [False, True])
def test_decode_any_truncation_never_crashes(tmp_path, one_video, faststart):
    path, frames = one_video
    write_mp4(tmp_path / "v.mp4", frames, faststart=faststart)
    data = (tmp_path / "v.mp4").read_bytes()
    rng = np.random.default_rng(0)
    for cut in np.linspace(0.02, 0.995, 30):
        target = tmp_path / "cut.mp4"
        target.write_bytes(data[: int(len(data) * cut)])
        try:
            clip = read_clip(str(target), lambda n: dense_indices(n, 8, 2, rng))
        except DecodeError as e:
            assert e.reason in ("empty", "corrupt", "too_short"), e
        else:
            assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8


def test_decode_zero_frame_video_is_corrupt(tmp_path):
    av = pytest.importorskip("av")
    # The mp4 muxer drops a track that received no frames; decord then finds no
    # video stream at all and cannot open the file.
    with av.open(str(tmp_path / "zero.mp4"), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        out.start_encoding()
    assert (tmp_path / "zero.mp4").stat().st_size > 0
    assert _reason(tmp_path / "zero.mp4") == "corrupt"


def test_decode_too_short(tmp_path):
    frames, _ = render_video("grow", 3, 64, np.random.default_rng(0))
    write_mp4(tmp_path / "three.mp4", frames)
    assert _decode_all(tmp_path / "three.mp4").shape == (3, 64, 64, 3)
    rng = np.random.default_rng(0)
    assert _reason(tmp_path / "three.mp4", lambda n: dense_indices(n, 8, 4, rng)) == "too_short"
    with pytest.raises(DecodeError) as info:
        load_pretrain_clip(VideoRecord(str(tmp_path / "three.mp4"), 4), SPEC, 0, 0)
    assert info.value.reason == "too_short"


def test_decode_error_pickles():
    err = pickle.loads(pickle.dumps(DecodeError("/x.mp4", "corrupt", "boom")))
    assert (err.path, err.reason) == ("/x.mp4", "corrupt") and "boom" in str(err)
    with pytest.raises(ValueError):
        DecodeError("/x.mp4", "weird")


# ---------------------------------------------------------------- transforms


def test_multi_scale_crop_shape_dtype_and_determinism():
    clip = np.random.default_rng(0).integers(0, 256, (8, 60, 80, 3), dtype=np.uint8)
    out = multi_scale_crop(clip, 48, rng=np.random.default_rng(1))
    assert out.shape == (8, 48, 48, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, multi_scale_crop(clip, 48, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError):
        multi_scale_crop(clip, 48)


def test_multi_scale_crop_params_follow_videomae():
    # 240x320, input 224: sides int(240*s) = 240, 210, 180, 158; 224 is not within 3.
    sides = [240, 210, 180, 158]
    allowed = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(500):
        top, left, h, w = multi_scale_crop_params(240, 320, 224, rng)
        assert (h, w) in allowed
        # Fixed-crop grid: offsets are multiples of a quarter of the slack.
        assert left % ((320 - w) // 4 or 1) == 0 and top % ((240 - h) // 4 or 1) == 0
        assert left + w <= 320 and top + h <= 240
        seen.add((h, w))
    assert seen == allowed
    # A side within 3 px of input_size snaps to it: 226 -> 224.
    _, _, h, w = multi_scale_crop_params(226, 226, 224, np.random.default_rng(0), scales=(1.0,))
    assert (h, w) == (224, 224)


def test_center_crop_and_resize():
    clip = np.zeros((2, 40, 60, 3), np.uint8)
    clip[:, :, 10:50] = 200  # the central 40x40 square
    out = center_crop_resize(clip, 20)
    assert out.shape == (2, 20, 20, 3) and out.dtype == np.uint8
    assert np.all(out == 200)
    flat = np.full((1, 10, 10, 3), 77, np.uint8)
    assert np.all(resize_clip(flat, 16, 6) == 77)


def test_normalize_clips_shape_and_value():
    batch = torch.zeros(2, 4, 6, 5, 3, dtype=torch.uint8)
    batch[1, 2, 3, 4] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = normalize_clips(batch)
    assert out.shape == (2, 3, 4, 6, 5) and out.dtype == torch.float32
    expected = [(255 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
                (0 / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
                (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    torch.testing.assert_close(out[1, :, 2, 3, 4], torch.tensor(expected))
    torch.testing.assert_close(out[0, 0, 0, 0, 0], torch.tensor(-IMAGENET_MEAN[0] / IMAGENET_STD[0]))


def test_renormalized_clips_are_the_clips_normalised_the_other_way():
    batch = torch.randint(0, 256, (2, 4, 6, 5, 3), dtype=torch.uint8)
    imagenet, clip = normalize_clips(batch, "imagenet"), normalize_clips(batch, "clip")
    torch.testing.assert_close(renormalize_clips(imagenet, "imagenet", "clip"), clip)
    torch.testing.assert_close(renormalize_clips(clip, "clip", "imagenet"), imagenet)
    assert renormalize_clips(clip, "clip", "clip") is clip


# ---------------------------------------------------------------- masking


def test_tube_mask_counts_and_tubes():
    mask = tube_mask(8, 14, 14, 0.9, np.random.default_rng(0))
    assert mask.dtype == bool and mask.shape == (8 * 14 * 14,)
    assert mask.sum() == 8 * int(0.9 * 196) == num_masked_tokens(8, 14, 14, 0.9)
    per_frame = mask.reshape(8, 196)
    assert (per_frame == per_frame[0]).all()


# ---------------------------------------------------------------- pipeline


def test_load_pretrain_clip_is_pure_function_of_seed_epoch_sample(dataset):
    rec = read_video_list(dataset.train_list)[0]
    a = load_pretrain_clip(rec, SPEC, epoch=2, sample_id=5)
    b = load_pretrain_clip(rec, SPEC, epoch=2, sample_id=5)
    assert a.video.shape == (8, 48, 48, 3) and a.video.dtype == np.uint8
    assert a.label == rec.label
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.mask, b.mask)
    # Mask: (8/2) x (48/8)^2 = 4 x 36 tokens, int(0.9*36) = 32 masked per frame.
    assert a.mask.dtype == bool and a.mask.shape == (4 * 36,)
    assert a.mask.sum() == 4 * 32
    assert (a.mask.reshape(4, 36) == a.mask[:36]).all()
    c = load_pretrain_clip(rec, SPEC, epoch=3, sample_id=5)
    assert not np.array_equal(a.mask, c.mask) or not np.array_equal(a.video, c.video)
    d = load_pretrain_clip(rec, SPEC, epoch=2, sample_id=6)
    assert not np.array_equal(a.mask, d.mask)


def test_load_pretrain_clip_same_in_another_process(dataset):
    rec = read_video_list(dataset.train_list)[1]
    here = load_pretrain_clip(rec, SPEC, epoch=1, sample_id=9)
    code = (
        "import sys, hashlib, numpy as np\n"
        "from internvideo.data.lists import VideoRecord\n"
        "from internvideo.data.decode import DecodeOptions\nfrom internvideo.data.pipeline import PretrainClipSpec, load_pretrain_clip\n"
        f"spec = PretrainClipSpec(**{SPEC.__dict__!r})\n"
        f"c = load_pretrain_clip(VideoRecord({rec.path!r}, {rec.label}), spec, 1, 9)\n"
        "print(hashlib.sha256(c.video.tobytes() + c.mask.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import hashlib

    assert out.stdout.strip() == hashlib.sha256(here.video.tobytes() + here.mask.tobytes()).hexdigest()


def test_pretrain_spec_validation():
    with pytest.raises(ValueError):
        PretrainClipSpec(num_frames=7, sampling_rate=2, input_size=48, patch_size=8,
                         tubelet_size=2, mask_ratio=0.9, seed=0)
    with pytest.raises(ValueError):
        PretrainClipSpec(num_frames=8, sampling_rate=2, input_size=50, patch_size=8,
                         tubelet_size=2, mask_ratio=0.9, seed=0)
