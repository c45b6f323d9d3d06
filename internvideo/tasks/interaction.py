"""``interaction``: InternVideo's cross-model interaction — the masked-video encoder's tokens attend to
the multimodal encoder's through gated cross-attention and feed-forward blocks (tanh gates at 0, so
training starts exactly at the base classifier), with both encoders loaded from earlier jobs and
frozen; the interaction blocks, the base's ``fc_norm`` and its head, and a head on the other's video
token (the other's own classifier head when its checkpoint has one, else zero) train.

The frozen encoders live inside the model the engine holds, on the same device: they run in every
forward, and keeping them in the engine's module means one object moves, saves and restores the
whole model (checkpoints stay self-contained, so ``job:<id>`` of an interaction job loads like any
other). Having ``requires_grad=False``, they are in no optimizer group — no gradients, no AdamW
state, nothing for ZeRO to partition — and their forward runs without a graph.

When the two encoders take different frame counts, the other encoder sees every ``k``-th frame of
the clip (the base's frames must be a multiple of its).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.models.clip import VideoCLIPVisual, clip_visual_config
from internvideo.models.interaction import InteractionClassifier
from internvideo.models.vit import VideoClassifier, transformer_flops
from internvideo.tasks import register_task
from internvideo.tasks.base import check_weights_path, load_initial_weights, unwrap
from internvideo.tasks.classification import (
    LOCAL_MHRA_KEYS,
    PRETRAINING_ONLY,
    Classification,
    ClassificationConfig,
    ClassifierModel,
    Regularization,
)
from internvideo.tasks.common import Strict


class OtherEncoder(Strict):
    """The multimodal encoder the base consults: a CLIP size with ``overrides`` of its video tower,
    and the checkpoint it comes from (a pretrain-mm or post-pretrain job, or a file)."""

    encoder: Literal["clip"] = "clip"
    size: str = "ViT-B/16"
    num_frames: int = Field(8, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)
    init: str = Field(min_length=1)


class InteractionModel(ClassifierModel):
    """The base classifier (VideoMAE; ``init`` its checkpoint: a post-pretrain or finetune job's keeps
    its head) and the other encoder, joined by ``depth`` gated blocks of ``heads`` heads."""

    encoder: Literal["videomae"] = "videomae"
    init: str = Field(min_length=1)
    other: OtherEncoder
    heads: int = Field(4, gt=0)
    depth: int = Field(1, gt=0)


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
    def _frames_divide(self) -> "InteractionConfig":
        if self.model.num_frames % self.model.other.num_frames:
            raise ValueError(f"model.num_frames ({self.model.num_frames}) must be a multiple of "
                             f"model.other.num_frames ({self.model.other.num_frames})")
        return self


class FrameTokens(nn.Module):
    """The multimodal video tower as the interaction reads it: a clip (B, 3, T, H, W), every
    ``stride``-th frame, to its video token and its last layer's tokens (B, M, width) — the video
    token carries what its UniBlocks learned across frames, which no single frame's token has."""

    def __init__(self, visual: VideoCLIPVisual, stride: int) -> None:
        super().__init__()
        self.visual, self.stride = visual, stride

    def forward(self, video: Tensor) -> Tensor:
        return self.visual.context(video[:, :, ::self.stride])


@register_task
class Interaction(Classification):
    kind = "interaction"
    encoder = "interaction"
    config_type = InteractionConfig

    def check_inputs(self) -> None:
        super().check_inputs()
        check_weights_path("model.other.init", self.config.model.other.init)

    def build_model(self) -> InteractionClassifier:
        config: InteractionConfig = self.config
        base = super().build_model()  # the VideoMAE classifier, loaded from model.init
        assert isinstance(base, VideoClassifier)
        other = config.model.other
        visual = VideoCLIPVisual(clip_visual_config(other.size, image_size=config.model.img_size,
                                                    num_frames=other.num_frames, **other.overrides))
        tokens = FrameTokens(visual, config.model.num_frames // other.num_frames)
        model = InteractionClassifier(base, tokens, visual.config.width, config.model.heads, config.model.depth)
        # One read of the other checkpoint, laid out as its classifier (``visual.*``, ``head.*``): a
        # post-pretrained encoder brings its head, which reads the same video token, so the combination
        # starts as the two classifiers' summed logits; a pretraining's has none, and the head stays zero.
        load_initial_weights(nn.ModuleDict({"visual": visual, "head": model.other_head}), other.init,
                             field="model.other.init", allow_missing=(*LOCAL_MHRA_KEYS, "head.*"),
                             allow_unexpected=(*PRETRAINING_ONLY, "fc_norm.*"))
        return model

    def flops_per_sample(self, model: nn.Module) -> float:
        """The two frozen encoders' forward passes, and forward and backward of what trains: its
        matrices, 2 FLOPs per weight and token (attention scores are small beside them here)."""
        interaction: InteractionClassifier = unwrap(model)
        visual = interaction.other.visual.config
        other = visual.num_frames * transformer_flops(visual.width, visual.layers, visual.grid**2 + 1, visual.mlp_ratio)
        trained = sum(p.numel() for p in interaction.parameters() if p.requires_grad)
        tokens = interaction.base.config.encoder.num_patches
        return interaction.base.flops_per_clip(training=False) + other + 3.0 * 2.0 * trained * tokens
