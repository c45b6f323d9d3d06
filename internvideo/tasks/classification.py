"""Supervised video classification, the base of the ``post-pretrain`` and ``finetune`` kinds (each a
module that registers it with its own defaults; this module registers no kind).

Either encoder: VideoMAE's ViT (mean-pooled tokens, ``fc_norm``, head) or the multimodal encoder,
CLIP's image tower with UniBlocks (head on its video token). Initial weights come from a file in
any layout ``internvideo.checkpoints`` reads or from a committed checkpoint of an earlier job; a
pretraining decoder in it is dropped, a missing head is initialised, and any other key that does
not fit fails the job at start, naming the keys.

Regularisation follows VideoMAE's fine-tuning: label smoothing, Mixup/CutMix (drawn per sample,
``internvideo.data.mixing``, so the pairs do not depend on the world size), drop path, layer-wise
learning-rate decay, and an exponential moving average of the weights saved with each checkpoint.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.lists import VideoRecord
from internvideo.data.mixing import MixSpec, apply_mix, draw_mix, soft_target
from internvideo.data.pipeline import ClipSpec, load_clip, load_test_clip, sample_rng
from internvideo.data.transforms import normalize_clips
from internvideo.metrics import topk_accuracy
from internvideo.models.clip import CLIPVideoClassifier, CLIPVisualConfig, clip_visual_config
from internvideo.models.vit import ClassifierConfig, VideoClassifier, classifier_config, transformer_flops
from internvideo.optim import WeightAverage, param_groups
from internvideo.tasks.base import (
    StepEngine,
    Task,
    array_to_tensor,
    check_weights_path,
    load_initial_weights,
    unwrap,
)
from internvideo.tasks.common import ConfigError, JobConfig, Strict
from internvideo.tasks.paths import InputPath

# What a pretraining checkpoint has that a classifier does not (dropped), and what a classifier has
# that a pretrained encoder does not (initialised here).
PRETRAINING_ONLY = ("decoder.*", "encoder_to_decoder.*", "mask_token", "encoder.norm.*",  # VideoMAE
                    "text.*", "caption.*", "logit_scale", "visual.proj")  # pretrain-mm
HEAD_KEYS = ("fc_norm.*", "head.*")
# UniFormerV2's local temporal MHRA, which a pretrain-mm checkpoint may not have: zero-initialised, it
# is an identity until trained, so a video tower may start without it.
LOCAL_MHRA_KEYS = ("visual.transformer.resblocks.*.lmhra.*",)
NEW_IN_CLASSIFIER = (*HEAD_KEYS, *LOCAL_MHRA_KEYS)


class ClassifierModel(Strict):
    """The encoder (``videomae``: a ViT size tiny…giant; ``clip``: ViT-B/16 or ViT-L/14, with
    UniBlocks) and ``overrides`` of its config fields, the number of classes, initial weights."""

    encoder: Literal["videomae", "clip"] = "videomae"
    size: str = "base"
    img_size: int = Field(224, gt=0)
    num_frames: int = Field(16, gt=0)
    num_classes: int = Field(gt=1)
    overrides: dict[str, Any] = Field(default_factory=dict)
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init: InputPath | None = None  # a checkpoint file in any supported layout, or a committed checkpoint folder

    def videomae_config(self, drop_path: float) -> ClassifierConfig:
        config = classifier_config(self.size, self.num_classes, img_size=self.img_size, num_frames=self.num_frames,
                                   drop_path_rate=drop_path, **self.overrides)
        return config.model_copy(update={"head_dropout": self.head_dropout})

    def clip_config(self, drop_path: float) -> CLIPVisualConfig:
        visual = {"image_size": self.img_size, "num_frames": self.num_frames, "drop_path_rate": drop_path,
                  **self.overrides}
        return clip_visual_config(self.size, **visual)

    def check_buildable(self, drop_path: float) -> None:
        """A bad size or override raises ValueError (at submit, not in the workers)."""
        self.token_width(drop_path)

    def token_width(self, drop_path: float) -> int:
        if self.encoder == "videomae":
            return self.videomae_config(drop_path).encoder.embed_dim
        return self.clip_config(drop_path).width


class Regularization(Strict):
    """VideoMAE's fine-tuning recipe by default; a kind may change the defaults."""

    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    mixup_alpha: float = Field(0.8, ge=0.0)
    cutmix_alpha: float = Field(1.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    switch_prob: float = Field(0.5, ge=0.0, le=1.0)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    layer_decay: float = Field(0.75, gt=0.0, le=1.0)  # 1: one learning rate for every layer
    ema_decay: float | None = Field(0.9999, gt=0.0, lt=1.0)  # None: no moving average

    def mix(self) -> MixSpec:
        return MixSpec(self.mixup_alpha, self.cutmix_alpha, self.mix_prob, self.switch_prob)


class ClassificationConfig(JobConfig):
    model: ClassifierModel
    regularization: Regularization = Field(default_factory=Regularization)

    @model_validator(mode="after")
    def _buildable(self) -> "ClassificationConfig":
        drop_path = self.regularization.drop_path
        try:
            self.model.check_buildable(drop_path)
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        if self.regularization.ema_decay is not None and self.train.zero_stage == 3:
            raise ValueError("regularization.ema_decay needs the whole weights on every rank: ZeRO stage ≤ 2")
        return self


def build_classifier(model: ClassifierModel, drop_path: float) -> VideoClassifier | CLIPVideoClassifier:
    if model.encoder == "videomae":
        return VideoClassifier(model.videomae_config(drop_path))
    return CLIPVideoClassifier(model.clip_config(drop_path), model.num_classes, model.head_dropout)


def forward_flops(classifier: VideoClassifier | CLIPVideoClassifier) -> float:
    """FLOPs of one clip's forward pass (matrix multiplies, 2 per weight and token)."""
    if isinstance(classifier, VideoClassifier):
        return classifier.flops_per_clip(training=False)
    visual = classifier.visual.config
    frames = visual.num_frames * transformer_flops(visual.width, visual.layers, visual.grid**2 + 1, visual.mlp_ratio)
    return frames + 2.0 * sum(p.numel() for p in classifier.head.parameters() if p.ndim == 2)  # the head, if any


@dataclass(frozen=True)
class LabelledClips:
    """The sample of supervised classification: ``video`` uint8 (T, S, S, 3), mixed with a partner
    clip when ``mix`` draws one, and ``target`` float32 (num_classes,), the smoothed (mixed) labels."""

    spec: ClipSpec
    num_classes: int
    smoothing: float
    mix: MixSpec

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        rng = sample_rng(self.spec.seed, epoch, sample_id)
        record = records[sample_id]
        video = load_clip(record, self.spec, rng)
        mix = draw_mix(self.mix, rng, len(records), sample_id)
        if mix is None:
            return {"video": video, "target": soft_target(record.label, self.num_classes, self.smoothing)}
        partner = records[mix.partner]
        other = load_clip(partner, self.spec, sample_rng(self.spec.seed, epoch, mix.partner))
        video, lam = apply_mix(video, other, mix)
        return {"video": video,
                "target": soft_target(record.label, self.num_classes, self.smoothing, partner.label, lam)}


@dataclass(frozen=True)
class TestClips:
    """A held-out sample: its single test view and its label (``video`` uint8, ``label`` int64)."""

    spec: ClipSpec

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        record = records[sample_id]
        return {"video": load_test_clip(record, self.spec), "label": np.int64(record.label)}


class Classification(Task[ClassificationConfig]):
    """Supervised classification; ``post-pretrain`` and ``finetune`` register it with their defaults.
    Validation: top-1 and top-5 accuracy (fractions) of the single test view of each held-out video."""

    encoder = "classifier"
    config_type = ClassificationConfig
    validates = True

    def __init__(self, config: ClassificationConfig) -> None:
        super().__init__(config)
        self._average: WeightAverage | None = None

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.config.model.init is not None:
            check_weights_path("model.init", self.config.model.init)

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        labels = {r.label for r in records}
        if max(labels) >= self.config.model.num_classes or min(labels) < 0:
            raise ConfigError("model.num_classes", f"{self.config.model.num_classes} classes, but the data has "
                                                   f"labels from {min(labels)} to {max(labels)}")

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        torch.manual_seed(self.config.train.seed)  # identical initial weights on every rank and every run
        model = self.config.model
        classifier = build_classifier(model, self.config.regularization.drop_path)
        if model.init is not None:
            load_initial_weights(classifier, model.init, allow_missing=NEW_IN_CLASSIFIER, allow_unexpected=PRETRAINING_ONLY)
        if self.config.regularization.ema_decay is not None:
            self._average = WeightAverage(classifier, self.config.regularization.ema_decay)
        return classifier

    def flops_per_sample(self, model: nn.Module) -> float:
        return 3.0 * forward_flops(unwrap(model))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        decay = self.config.regularization.layer_decay
        return param_groups(model, self.config.train.weight_decay, decay, _layer_of(model) if decay < 1 else None)

    # -- data -----------------------------------------------------------------------------------
    def _clip_spec(self) -> ClipSpec:
        model, data = self.config.model, self.config.data
        return ClipSpec(num_frames=model.num_frames, sampling_rate=data.sampling_rate, input_size=model.img_size,
                        seed=self.config.train.seed, decode=data.decode_options(model.img_size),
                        sampler=data.sampler, crop=data.crop, flip=data.flip)

    def sample_fn(self) -> LabelledClips:
        regularization = self.config.regularization
        return LabelledClips(self._clip_spec(), self.config.model.num_classes, regularization.label_smoothing,
                             regularization.mix())

    def val_sample_fn(self) -> TestClips:
        return TestClips(self._clip_spec())

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        video = array_to_tensor(batch["video"], device)
        labels = {name: array_to_tensor(batch[name], device) for name in ("target", "label") if name in batch}
        return {"video": normalize_clips(video, self.config.data.normalization).to(dtype), **labels}

    def predict(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"logits": model(batch["video"]).float(), "label": batch["label"]}

    def validation_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return topk_accuracy(torch.from_numpy(outputs["logits"]), torch.from_numpy(outputs["label"]), ks=(1, 5))

    # -- training -------------------------------------------------------------------------------
    def loss(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy against the soft target; accuracy against its largest class (the sample's
        own label unless a mix gave the partner more)."""
        logits = model(batch["video"]).float()
        target = batch["target"]
        loss = -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()
        accuracy = (logits.argmax(dim=-1) == target.argmax(dim=-1)).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def after_step(self, model: nn.Module) -> None:
        if self._average is not None:
            self._average.update(model)

    def state_dict(self) -> dict[str, Any]:
        return {"weight_average": self._average.state_dict()} if self._average is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._average is not None and "weight_average" in state:
            self._average.load_state_dict(state["weight_average"])
        elif state or self._average is not None:
            raise ValueError(f"checkpoint state {sorted(state)} does not fit regularization.ema_decay="
                             f"{self.config.regularization.ema_decay}")


_BLOCK = re.compile(r"(?:encoder\.blocks|visual\.transformer\.resblocks)\.(\d+)\.")
_UNIBLOCK = re.compile(r"visual\.transformer\.(?:dpe|dec)\.(\d+)\.")
_EMBEDDING = ("encoder.patch_embed.", "encoder.pos_embed", "visual.conv1.", "visual.class_embedding",
              "visual.positional_embedding", "visual.ln_pre.")


def _layer_of(model: nn.Module):
    """Layer ids for layer-wise decay: 0 the embeddings, ``i + 1`` block ``i`` (a UniBlock counts with
    the block it follows), ``depth + 1`` the rest (final norms, the head)."""
    model = unwrap(model)
    if isinstance(model, VideoClassifier):
        depth, global_layers = model.config.encoder.depth, 0
    else:
        depth, global_layers = model.visual.config.layers, model.visual.config.global_layers

    def layer_of(name: str) -> tuple[int, int]:
        if name.startswith(_EMBEDDING):
            return 0, depth + 2
        if block := _BLOCK.match(name):
            return int(block.group(1)) + 1, depth + 2
        if uniblock := _UNIBLOCK.match(name):
            return depth - global_layers + int(uniblock.group(1)) + 1, depth + 2
        return depth + 1, depth + 2

    return layer_of
