"""Masked video pretraining (VideoMAE): the job's config schema and its engine-agnostic step.

Everything a trainer needs to run this job kind is here: how to build the model, how to
turn a decoded batch (uint8 clips + tube masks) into a loss, and how many FLOPs a clip
costs. Which engine wraps the model (DeepSpeed on workers, plain torch in tests) is not
this module's business.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from internvideo.data.decode import DecodeOptions
from internvideo.data.formats import SourceFormat, VideoSource
from internvideo.data.pipeline import PretrainClipSpec
from internvideo.data.transforms import normalize_clips
from internvideo.models.videomae import (
    VideoMAEConfig,
    VideoMAEPretrain,
    videomae_config,
)

KIND = "pretrain-mae"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """Size name plus overrides; resolved into a VideoMAEConfig by ``resolve()``."""

    size: str = "base"
    img_size: int = Field(224, gt=0)
    num_frames: int = Field(16, gt=0)
    mask_ratio: float = Field(0.9, gt=0.0, lt=1.0)
    encoder: dict[str, Any] = Field(default_factory=dict)
    decoder: dict[str, Any] = Field(default_factory=dict)

    def resolve(self) -> VideoMAEConfig:
        return videomae_config(self.size, img_size=self.img_size, num_frames=self.num_frames,
                               mask_ratio=self.mask_ratio, encoder_overrides=self.encoder, **self.decoder)

    @model_validator(mode="after")
    def _resolvable(self) -> "ModelSection":
        self.resolve()  # a bad size or override fails here, at submit time
        return self


class DataSection(_Strict):
    train_list: str = Field(min_length=1)  # the annotation file, in ``format``
    format: SourceFormat = "list"  # list (path label) | ssv2 | video_text | activitynet
    labels: str | None = None  # ssv2: its labels.json
    subset: str | None = None  # activitynet: one split
    root: str | None = None  # relative video paths resolve against this (default: the list's folder)
    sampler: Literal["dense", "segment"] = "dense"  # segment: one frame from each of num_frames segments
    sampling_rate: int = Field(4, gt=0)  # dense only
    crop: Literal["multi_scale", "random_resized"] = "multi_scale"
    flip: bool = False  # leave off when classes depend on direction (SSv2, left vs right)
    normalization: Literal["imagenet", "clip"] = "imagenet"
    # Decode videos whose short side is larger straight to this size; "auto": VideoMAE's 256 for 224,
    # i.e. 8/7 of the input; "full": never scale.
    decode_short_side: int | Literal["auto", "full"] = "auto"
    decode_workers: int = Field(2, ge=1)  # the pool's size at start, and its minimum
    decode_workers_max: int | None = Field(None, ge=1)  # grow up to this while trainers wait; None: fixed
    decode_cpus: float = Field(1.0, gt=0)
    # Decode threads per worker; None: one per CPU in decode_cpus. A few workers of several threads
    # cost less than many single-threaded ones (fewer processes; benchmarks/README.md).
    decode_threads: int | None = Field(None, ge=1)
    data_wait_target: float = Field(0.05, gt=0.0, lt=1.0)  # grow the pool when trainers wait longer
    autoscale_window: int = Field(8, ge=1)  # steps of data-wait history behind each pool decision
    max_in_flight: int = Field(4, ge=1)  # decode requests outstanding per trainer (backpressure)
    max_bad_fraction: float = Field(0.1, ge=0.0, le=1.0)
    decode_timeout_s: float = Field(120.0, gt=0)
    # A decode worker that dies is restarted by Ray and its in-flight requests retried, up to
    # this many times per worker; past that, its loss is a failure the job recovers from.
    decode_restarts: int = Field(8, ge=0)
    decode_backend: Literal["decord", "pyav"] = "decord"
    decode_fallback: bool = True  # a file decord cannot read (GIF, raw H.264, MPEG-TS) is read with PyAV
    video_time_limit_s: float = Field(60.0, gt=0)  # a video taking longer is skipped as "timeout"

    @model_validator(mode="after")
    def _consistent(self) -> "DataSection":
        self.source()  # format and its options agree
        if self.decode_workers_max is not None and self.decode_workers_max < self.decode_workers:
            raise ValueError(f"decode_workers_max ({self.decode_workers_max}) is below decode_workers "
                             f"({self.decode_workers})")
        if isinstance(self.decode_short_side, int) and self.decode_short_side < 2:
            raise ValueError(f"decode_short_side must be >= 2, 'auto' or 'full', got {self.decode_short_side}")
        return self

    def source(self) -> VideoSource:
        return VideoSource(self.format, self.train_list, self.root, self.labels, self.subset)

    @property
    def max_decode_workers(self) -> int:
        return self.decode_workers_max or self.decode_workers

    @property
    def threads_per_decode_worker(self) -> int:
        return self.decode_threads or max(1, round(self.decode_cpus))


class TrainSection(_Strict):
    steps: int = Field(gt=0)
    global_batch: int = Field(gt=0)
    micro_batch: int = Field(gt=0)
    lr: float = Field(1.5e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(0.0, ge=0)  # 0: off
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)  # 0: only at the end
    keep_checkpoints: int = Field(0, ge=0)  # keep the newest K committed checkpoints; 0: keep all
    zero_stage: Literal[0, 1, 2] = 2
    step_timeout_s: float = Field(600.0, gt=0)
    max_failures: int = Field(3, ge=0)  # worker losses survived by restarting from the last checkpoint
    record_samples: bool = False  # debug: log the sample ids of every step to <job>/samples.jsonl
    resume_from: str | None = None  # a committed checkpoint folder

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainSection":
        if self.global_batch % self.micro_batch:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of micro_batch "
                             f"({self.micro_batch})")
        return self


class PretrainMAEConfig(_Strict):
    model: ModelSection
    data: DataSection
    train: TrainSection

    def valid_world_sizes(self, min_workers: int, max_workers: int) -> list[int]:
        """World sizes in [min, max] that keep the global batch whole."""
        step = self.train.micro_batch
        return [w for w in range(min_workers, max_workers + 1) if self.train.global_batch % (step * w) == 0]

    def clip_spec(self) -> PretrainClipSpec:
        enc, data = self.model.resolve().encoder, self.data
        short_side = data.decode_short_side
        if short_side == "full":
            short_side = None
        elif short_side == "auto":  # VideoMAE resizes to a 256 short side for 224 inputs
            short_side = 2 * round(self.model.img_size * 8 / 7 / 2)
        return PretrainClipSpec(num_frames=self.model.num_frames, sampling_rate=data.sampling_rate,
                                input_size=self.model.img_size, patch_size=enc.patch_size,
                                tubelet_size=enc.tubelet_size, mask_ratio=self.model.mask_ratio,
                                seed=self.train.seed, sampler=data.sampler, crop=data.crop, flip=data.flip,
                                decode=DecodeOptions(backend=data.decode_backend, fallback=data.decode_fallback,
                                                     time_limit_s=data.video_time_limit_s, short_side=short_side))


def build_model(config: PretrainMAEConfig) -> VideoMAEPretrain:
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank and every run
    return VideoMAEPretrain(config.model.resolve())


def batch_to_tensors(batch: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype = torch.float32,
                     normalization: str = "imagenet") -> dict[str, torch.Tensor]:
    """Decoded uint8 clips (B, T, H, W, 3) become normalised input (in the model's ``dtype``)
    and float32 [0, 1] pixels for the targets, both (B, 3, T, H, W)."""
    # Arrays from Ray's object store are read-only; torch wants to own writable memory.
    video = torch.from_numpy(np.require(batch["video"], requirements="W")).to(device, non_blocking=True)
    pixels = video.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
    return {"video": normalize_clips(video, normalization).to(dtype), "pixels": pixels,
            "mask": torch.from_numpy(np.require(batch["mask"], requirements="W")).to(device, non_blocking=True)}


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MSE on per-patch-normalised pixels of the masked tubes. ``model`` may be an engine wrapper."""
    predictions = model(batch["video"], batch["mask"])  # (B, N_masked, tubelet·p·p·3)
    core: VideoMAEPretrain = getattr(model, "module", model)
    return core.reconstruction_loss(predictions, batch["pixels"], batch["mask"])
