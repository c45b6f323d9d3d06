"""What a decode worker runs for one sample: a clip (frames, crop, flip), and for masked video
pretraining its tube mask. Every random draw comes from one generator seeded by
``(seed, epoch, sample)``, so a sample is the same in any process, after any restart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from internvideo.data.decode import DecodeOptions, read_clip
from internvideo.data.lists import VideoRecord
from internvideo.data.masking import tube_mask
from internvideo.data.sampling import dense_indices, dense_view_indices, segment_indices
from internvideo.data.transforms import maybe_flip, multi_scale_crop, random_resized_crop, spatial_views

__all__ = ["ClipSpec", "PretrainClipSpec", "PretrainClip", "MaskedClips", "sample_rng", "load_clip", "decode_frames",
           "augment", "load_test_clip", "load_pretrain_clip", "load_pretrain_clips"]


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """How a clip is cut from a video (VideoMAE defaults: 16 frames every 4th, 224 pixels a side)."""

    num_frames: int
    sampling_rate: int
    input_size: int
    seed: int
    decode: DecodeOptions = DecodeOptions()  # how the video is read (backend, fallback, time limit, size)
    sampler: Literal["dense", "segment"] = "dense"  # segment: one frame from each of num_frames segments
    crop: Literal["multi_scale", "random_resized"] = "multi_scale"
    flip: bool = False  # keep off for direction-sensitive classes (SSv2, left vs right)

    def __post_init__(self) -> None:
        if min(self.num_frames, self.sampling_rate, self.input_size) < 1:
            raise ValueError(f"all sizes must be >= 1: {self}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True, kw_only=True)
class PretrainClipSpec(ClipSpec):
    """A clip plus its tube mask (VideoMAE: patch 16, tubelet 2, ratio 0.9)."""

    patch_size: int
    tubelet_size: int
    mask_ratio: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.patch_size, self.tubelet_size) < 1:
            raise ValueError(f"all sizes must be >= 1: {self}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} not divisible by tubelet_size {self.tubelet_size}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} not divisible by patch_size {self.patch_size}")
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(T / tubelet, S / patch, S / patch)."""
        side = self.input_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.token_grid
        return t * h * w


@dataclass
class PretrainClip:
    """One pretraining sample as it travels to the trainer."""

    video: np.ndarray  # uint8 (T, S, S, 3)
    mask: np.ndarray  # bool (N,), N = T/tubelet * (S/patch)**2, True = masked
    label: int


def sample_rng(seed: int, epoch: int, sample_id: int) -> np.random.Generator:
    """The one generator behind every random choice of a sample."""
    return np.random.default_rng([seed, epoch, sample_id])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image(path: str) -> bool:
    """An image file: read as a still clip, its one frame repeated (image–text pairs batch with
    video–text pairs that way; PyAV decodes it)."""
    return path.lower().endswith(IMAGE_SUFFIXES)


def _still(spec: ClipSpec) -> np.ndarray:
    return np.zeros(spec.num_frames, dtype=np.int64)


def load_clip(record: VideoRecord, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Decode, crop and (maybe) flip one clip, uint8 (T, S, S, 3), drawing frame indices, crop
    box and flip from ``rng`` in that order. An image is a still clip.

    Raises:
        DecodeError: the video is missing, empty, corrupt, too short or over its time limit.
    """
    return augment(decode_frames(record, spec, rng), spec, rng)


def decode_frames(record: VideoRecord, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip's frames at decoded size, uint8 (T, H, W, 3), their indices drawn from ``rng``."""
    def frames(n: int) -> np.ndarray:
        if is_image(record.path):
            return _still(spec)
        if spec.sampler == "dense":
            return dense_indices(n, spec.num_frames, spec.sampling_rate, rng)
        return segment_indices(n, spec.num_frames, rng)

    return read_clip(record.path, frames, spec.decode)


def augment(clip: np.ndarray, spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """Crop and (maybe) flip decoded frames into a training clip, uint8 (T, S, S, 3), drawing the crop
    box and the flip from ``rng``."""
    if spec.crop == "multi_scale":
        video = multi_scale_crop(clip, spec.input_size, rng=rng)  # (T, S, S, 3)
    else:
        video = random_resized_crop(clip, spec.input_size, rng)
    return maybe_flip(video, rng, spec.flip)


def load_test_clip(record: VideoRecord, spec: ClipSpec) -> np.ndarray:
    """The single test view of a clip, uint8 (T, S, S, 3): the centre window (or each segment's middle
    frame), the short side resized to the input size and the centre square cut. No random draw."""
    return load_test_views(record, spec, num_clips=1, num_crops=1)[0]


def load_test_views(record: VideoRecord, spec: ClipSpec, num_clips: int, num_crops: int) -> np.ndarray:
    """Multi-view testing (VideoMAE's): ``num_clips`` windows spread evenly over the video, each cut
    into ``num_crops`` squares along its long side after resizing the short side to the input size;
    uint8 (num_clips · num_crops, T, S, S, 3), clip-major. No random draw. Segment sampling takes one
    view in time (each segment's middle frame).

    Raises:
        DecodeError: the video is missing, empty, corrupt, too short or over its time limit.
    """
    if spec.sampler == "segment" and num_clips != 1:
        raise ValueError(f"segment sampling tests one clip in time, not {num_clips}")
    t = spec.num_frames

    def frames(n: int) -> np.ndarray:
        if is_image(record.path):
            return np.tile(_still(spec), num_clips)
        if spec.sampler == "dense":
            return dense_view_indices(n, t, spec.sampling_rate, num_clips).reshape(-1)
        return segment_indices(n, t, None)

    clips = read_clip(record.path, frames, spec.decode)  # (num_clips · T, H, W, 3)
    return np.concatenate([spatial_views(clips[c * t:(c + 1) * t], spec.input_size, num_crops)
                           for c in range(num_clips)])


def load_pretrain_clips(record: VideoRecord, spec: PretrainClipSpec, epoch: int, sample_id: int,
                        repeats: int = 1) -> list[PretrainClip]:
    """Decode one sample's frames once and cut ``repeats`` clips from them, each with its own crop,
    flip and tube mask (VideoMAE v2's repeated sampling: the decode, the costly part, is shared);
    a pure function of (seed, epoch, sample_id, repeats).

    Draw order from the single generator is fixed: frame indices, then for each clip its crop box,
    flip (only when enabled) and tube mask. Changing that order changes every sample of every run,
    so keep it; one repeat draws exactly what a sample always drew.

    Raises:
        DecodeError: the video is missing, empty, corrupt, too short or over its time limit.
    """
    if epoch < 0 or sample_id < 0:
        raise ValueError(f"epoch={epoch} and sample_id={sample_id} must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = sample_rng(spec.seed, epoch, sample_id)
    frames = decode_frames(record, spec, rng)
    clips = []
    for _ in range(repeats):
        video = augment(frames, spec, rng)
        clips.append(PretrainClip(video=video, mask=tube_mask(*spec.token_grid, spec.mask_ratio, rng),
                                  label=int(record.label)))
    return clips


def load_pretrain_clip(record: VideoRecord, spec: PretrainClipSpec, epoch: int, sample_id: int) -> PretrainClip:
    """One sample's clip and tube mask (``load_pretrain_clips`` with one repeat)."""
    return load_pretrain_clips(record, spec, epoch, sample_id)[0]


@dataclass(frozen=True)
class MaskedClips:
    """The sample function of masked video pretraining: ``video`` uint8 (T, S, S, 3), ``mask``
    bool (N,), ``label`` int64 (unused by the loss; kept for probing). With ``clips_per_sample``
    above 1 (repeated sampling), every array gains a leading axis of that many clips of the one
    decoded span."""

    spec: PretrainClipSpec
    clips_per_sample: int = 1

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        clips = load_pretrain_clips(records[sample_id], self.spec, epoch, sample_id, self.clips_per_sample)
        arrays = {"video": np.stack([c.video for c in clips]), "mask": np.stack([c.mask for c in clips]),
                  "label": np.full(len(clips), clips[0].label, dtype=np.int64)}
        return arrays if self.clips_per_sample > 1 else {name: value[0] for name, value in arrays.items()}
