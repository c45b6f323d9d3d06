"""``linear-probe``: how linearly separable a pretrained encoder's features are — the encoder loaded
from ``model.init`` and frozen (in no optimizer group; its forward builds no graph), a linear head
on its pooled features trained with cross-entropy; only the head changes. By default no mixing and
no label smoothing; drop path is held at 0 (the frozen encoder runs as it was trained).
Validation: top-1/top-5 of the held-out list (``data.val_list``).
"""
from __future__ import annotations

from pydantic import Field
from torch import nn

from internvideo.tasks import register_task
from internvideo.tasks.base import unwrap
from internvideo.tasks.classification import (
    Classification,
    ClassificationConfig,
    ClassifierModel,
    Regularization,
    forward_flops,
)
from internvideo.tasks.paths import InputPath


class ProbedEncoder(ClassifierModel):
    init: InputPath = Field(min_length=1)  # the encoder probed: a pretraining's checkpoint, or any classifier's


class ProbeRegularization(Regularization):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    drop_path: float = Field(0.0, ge=0.0, le=0.0)  # the encoder is frozen: it runs as it was trained
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)


class LinearProbeConfig(ClassificationConfig):
    model: ProbedEncoder
    regularization: ProbeRegularization = Field(default_factory=ProbeRegularization)


@register_task
class LinearProbe(Classification):
    kind = "linear-probe"
    config_type = LinearProbeConfig

    def build_model(self) -> nn.Module:
        classifier = super().build_model()
        for name, child in classifier.named_children():
            child.requires_grad_(name == "head")
        return classifier

    def flops_per_sample(self, model: nn.Module) -> float:
        """The frozen encoder's forward pass, and the head's backward (twice its forward)."""
        classifier = unwrap(model)
        return forward_flops(classifier) + 4.0 * classifier.head.weight.numel()
