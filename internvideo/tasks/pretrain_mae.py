"""``pretrain-mae``: masked video pretraining (VideoMAE) — the job's config schema and its task.

Everything a trainer needs to run this kind is here: how to build the model, what a sample
is (a clip and its tube mask), how a decoded batch becomes a loss, and how many FLOPs a clip
costs. Which engine wraps the model (DeepSpeed on workers, plain torch in tests) is not
this module's business.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from internvideo.data.pipeline import MaskedClips, PretrainClipSpec
from internvideo.data.transforms import normalize_clips
from internvideo.models.videomae import (
    VideoMAEConfig,
    VideoMAEPretrain,
    videomae_config,
)
from internvideo.tasks import register_task
from internvideo.tasks.base import StepEngine, Task, array_to_tensor, unwrap
from internvideo.tasks.common import JobConfig, Strict, TrainingData


class ModelSection(Strict):
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


class MaskedPretrainingData(TrainingData):
    # VideoMAE v2's repeated sampling (its ``num_sample``): each video decoded is cut into this many
    # clips, each with its own crop and tube mask, so a micro-batch of m clips decodes m / this videos.
    # Decoding is most of a clip's cost; an epoch then sees each video this many times over.
    repeated_sampling: int = Field(1, ge=1)


class PretrainMAEConfig(JobConfig):
    model: ModelSection
    data: MaskedPretrainingData

    @model_validator(mode="after")
    def _whole_videos(self) -> "PretrainMAEConfig":
        if self.train.micro_batch % self.data.repeated_sampling:
            raise ValueError(f"train.micro_batch ({self.train.micro_batch}) must be a multiple of "
                             f"data.repeated_sampling ({self.data.repeated_sampling}): a video's clips share a micro-batch")
        return self

    def clip_spec(self) -> PretrainClipSpec:
        enc, data = self.model.resolve().encoder, self.data
        return PretrainClipSpec(num_frames=self.model.num_frames, sampling_rate=data.sampling_rate,
                                input_size=self.model.img_size, patch_size=enc.patch_size,
                                tubelet_size=enc.tubelet_size, mask_ratio=self.model.mask_ratio,
                                seed=self.train.seed, sampler=data.sampler, crop=data.crop, flip=data.flip,
                                decode=data.decode_options(self.model.img_size))


@register_task
class PretrainMAE(Task[PretrainMAEConfig]):
    """VideoMAE: reconstruct the pixels of masked tubes from the visible ones."""

    kind = "pretrain-mae"
    encoder = "videomae"
    config_type = PretrainMAEConfig

    def build_model(self) -> VideoMAEPretrain:
        torch.manual_seed(self.config.train.seed)  # identical initial weights on every rank and every run
        return VideoMAEPretrain(self.config.model.resolve())

    def flops_per_sample(self, model: torch.nn.Module) -> float:
        return unwrap(model).flops_per_clip(training=True)

    def sample_fn(self) -> MaskedClips:
        return MaskedClips(self.config.clip_spec(), clips_per_sample=self.config.data.repeated_sampling)

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Decoded uint8 clips (B, T, H, W, 3) become normalised input (in the model's ``dtype``)
        and float32 [0, 1] pixels for the targets, both (B, 3, T, H, W)."""
        video = array_to_tensor(batch["video"], device)
        pixels = video.permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
        return {"video": normalize_clips(video, self.config.data.normalization).to(dtype), "pixels": pixels,
                "mask": array_to_tensor(batch["mask"], device)}

    def loss(self, model: StepEngine | torch.nn.Module,
             batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE on per-patch-normalised pixels of the masked tubes."""
        predictions = model(batch["video"], batch["mask"])  # (B, N_masked, tubelet·p·p·3)
        return unwrap(model).reconstruction_loss(predictions, batch["pixels"], batch["mask"]), {}
