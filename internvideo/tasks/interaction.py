"""``interaction``: InternVideo's cross-model interaction — one post-pretrained encoder's tokens attend
to the other's through gated cross-attention and feed-forward blocks, and the other's own logits add
in through a gate (every gate at 0, so training starts exactly at the base classifier). As in the
paper, the base is by default the multimodal encoder (its video token queries VideoMAE's tokens);
``model.encoder`` / ``model.other.encoder`` swap them. Both encoders are loaded from earlier jobs and
frozen; the interaction blocks, the gates and both classifiers' readouts (their heads, VideoMAE's
``fc_norm``) train — a pretraining checkpoint brings no head, and one is initialised.

The frozen encoders live inside the model the engine holds, on the same device: they run in every
forward, and keeping them in the engine's module means one object moves, saves and restores the
whole model (checkpoints stay self-contained, so ``job:<id>`` of an interaction job loads like any
other). Having ``requires_grad=False``, they are in no optimizer group — no gradients, no AdamW
state, nothing for ZeRO to partition — and their forward runs without a graph.

The clip has as many frames as the encoder that takes more; the other sees every ``k``-th of them
(each encoder's frame count must divide the larger). The clip is normalised as ``data.normalization``
says, which is the base's; ``model.other.normalization`` names the other's when it differs
(CLIP's statistics against ImageNet's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.pipeline import ClipSpec
from internvideo.data.transforms import renormalize_clips
from internvideo.models.interaction import InteractionClassifier
from internvideo.tasks import register_task
from internvideo.tasks.base import check_weights_path, load_initial_weights, unwrap
from internvideo.tasks.classification import (
    NEW_IN_CLASSIFIER,
    PRETRAINING_ONLY,
    Classification,
    ClassificationConfig,
    ClassifierModel,
    Regularization,
    build_classifier,
    forward_flops,
)
from internvideo.tasks.common import Strict
from internvideo.tasks.paths import InputPath


class OtherEncoder(Strict):
    """The classifier the base consults: its encoder, size, ``overrides`` and frame count, and the
    checkpoint it comes from (a post-pretrain job's brings its head; a pretraining's, none)."""

    encoder: Literal["videomae", "clip"] = "videomae"
    size: str = "base"
    num_frames: int = Field(16, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)
    normalization: Literal["imagenet", "clip"] | None = None  # what it was trained on; None: data.normalization
    init: InputPath = Field(min_length=1)


class InteractionModel(ClassifierModel):
    """The base classifier (``init`` its checkpoint) and the other one, joined by ``depth`` gated blocks
    of ``heads`` heads (which divide the base's token width)."""

    encoder: Literal["videomae", "clip"] = "clip"
    size: str = "ViT-B/16"
    num_frames: int = Field(8, gt=0)
    init: InputPath = Field(min_length=1)
    other: OtherEncoder
    heads: int = Field(4, gt=0)
    depth: int = Field(1, gt=0)

    def other_classifier(self) -> ClassifierModel:
        other = self.other
        return ClassifierModel(encoder=other.encoder, size=other.size, img_size=self.img_size,
                               num_frames=other.num_frames, num_classes=self.num_classes,
                               overrides=other.overrides, head_dropout=self.head_dropout, init=other.init)

    def clip_frames(self) -> int:
        return max(self.num_frames, self.other.num_frames)


class InteractionRegularization(Regularization):
    """No mixing, one learning rate, no average: only a few new parameters train."""

    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)  # the encoders are frozen (and run in eval mode)
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)


class InteractionConfig(ClassificationConfig):
    model: InteractionModel
    regularization: InteractionRegularization = Field(default_factory=InteractionRegularization)

    @model_validator(mode="after")
    def _fits(self) -> "InteractionConfig":
        model = self.model
        frames = model.clip_frames()
        for name, count in (("model.num_frames", model.num_frames), ("model.other.num_frames", model.other.num_frames)):
            if frames % count:
                raise ValueError(f"{name} ({count}) must divide the clip's {frames} frames")
        width = model.token_width(drop_path=0.0)
        if width % model.heads:
            raise ValueError(f"model.heads ({model.heads}) must divide the base's token width ({width})")
        try:
            model.other_classifier().check_buildable(drop_path=0.0)
        except ValueError as err:
            raise ValueError(f"model.other: {err}") from None
        return self


@dataclass(frozen=True)
class ClipView:
    """What one encoder of the interaction sees of the clip: every ``stride``-th frame, normalised as
    it was trained (the clip comes normalised as ``data.normalization`` says)."""

    stride: int
    clip_normalization: str
    normalization: str

    def __call__(self, video: Tensor) -> Tensor:
        return renormalize_clips(video[:, :, ::self.stride], self.clip_normalization, self.normalization)


@register_task
class Interaction(Classification):
    kind = "interaction"
    encoder = "interaction"
    config_type = InteractionConfig

    def check_inputs(self) -> None:
        super().check_inputs()
        check_weights_path("model.other.init", self.config.model.other.init)

    def build_model(self) -> InteractionClassifier:
        model: InteractionModel = self.config.model
        base = super().build_model()  # loaded from model.init
        other_spec = model.other_classifier()
        other = build_classifier(other_spec, drop_path=0.0)
        load_initial_weights(other, other_spec.init, field="model.other.init", allow_missing=NEW_IN_CLASSIFIER,
                             allow_unexpected=PRETRAINING_ONLY)
        frames, normalization = model.clip_frames(), self.config.data.normalization
        views = (ClipView(frames // model.num_frames, normalization, normalization),
                 ClipView(frames // model.other.num_frames, normalization, model.other.normalization or normalization))
        return InteractionClassifier(base, other, model.heads, model.depth, views)

    def _clip_spec(self) -> ClipSpec:
        return dataclasses.replace(super()._clip_spec(), num_frames=self.config.model.clip_frames())

    def flops_per_sample(self, model: nn.Module) -> float:
        """The two frozen encoders' forward passes, and forward and backward of what trains: its
        matrices, 2 FLOPs per weight and token (attention scores are small beside them here)."""
        interaction: InteractionClassifier = unwrap(model)
        trained = sum(p.numel() for p in interaction.parameters() if p.requires_grad)
        tokens = interaction.base.num_queries
        return forward_flops(interaction.base) + forward_flops(interaction.other) + 3.0 * 2.0 * trained * tokens
