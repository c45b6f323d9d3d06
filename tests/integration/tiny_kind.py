"""A job kind that lives outside ``internvideo/tasks``: a linear classifier on a clip's mean colour
per frame. It shows what a kind is made of — a config section, a model, a sample that is not
VideoMAE's (a clip and its label, no mask), a loss with a named metric — and that the coordinator
runs it knowing nothing but its name."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import ClipSpec, load_clip, sample_rng
from internvideo.tasks import register_task
from internvideo.tasks.base import StepEngine, Task, array_to_tensor
from internvideo.tasks.common import JobConfig, Strict


class ProbeModel(Strict):
    num_classes: int = Field(8, gt=1)
    num_frames: int = Field(4, gt=0)
    img_size: int = Field(32, gt=0)


class ColourProbeConfig(JobConfig):
    model: ProbeModel = Field(default_factory=ProbeModel)


@dataclass(frozen=True)
class LabelledClips:
    spec: ClipSpec

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        video = load_clip(records[sample_id], self.spec, sample_rng(self.spec.seed, epoch, sample_id))
        return {"video": video, "label": np.int64(records[sample_id].label)}


@register_task
class ColourProbe(Task[ColourProbeConfig]):
    kind = "test-colour-probe"
    encoder = "linear"
    config_type = ColourProbeConfig

    def build_model(self) -> torch.nn.Module:
        torch.manual_seed(self.config.train.seed)
        return torch.nn.Linear(3 * self.config.model.num_frames, self.config.model.num_classes)

    def flops_per_sample(self, model: torch.nn.Module) -> float:
        return 6.0 * model.in_features * model.out_features

    def sample_fn(self) -> LabelledClips:
        m, data = self.config.model, self.config.data
        return LabelledClips(ClipSpec(num_frames=m.num_frames, sampling_rate=data.sampling_rate,
                                      input_size=m.img_size, seed=self.config.train.seed,
                                      decode=data.decode_options(m.img_size)))

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype) -> dict[str, torch.Tensor]:
        video = array_to_tensor(batch["video"], device).to(dtype).div_(255.0)  # (B, T, S, S, 3)
        return {"colour": video.mean(dim=(2, 3)).flatten(1), "label": array_to_tensor(batch["label"], device)}

    def loss(self, model: StepEngine | torch.nn.Module,
             batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["colour"])
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        return torch.nn.functional.cross_entropy(logits, batch["label"]), {"accuracy": accuracy.detach()}
