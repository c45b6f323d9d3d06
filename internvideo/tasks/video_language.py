"""What the video–text evaluations (``eval-zero-shot``, ``eval-retrieval``, ``eval-multiple-choice``)
share: the model they evaluate — CLIP's towers with UniFormerV2's UniBlocks, from a ``pretrain-mm``
job's checkpoint or a CLIP file — and a video's embedding over its test views. Registers no kind.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import ClipSpec, load_test_views
from internvideo.models.clip import UNIBLOCK_KEYS, VideoCLIP, VideoCLIPConfig, video_clip_config
from internvideo.models.tokenizer import default_tokenizer
from internvideo.models.vit import transformer_flops
from internvideo.tasks.base import EvaluationTask, array_to_tensor, load_initial_weights
from internvideo.tasks.common import ConfigError, EvalJobConfig, Strict
from internvideo.tasks.eval_recognition import TestViewsOf, Views, check_views, test_clip_spec, views_to_clips
from internvideo.tasks.paths import InputPath

# What a pretrain-mm checkpoint has beside the two towers: the caption decoder.
NOT_EVALUATED = ("caption.*",)


class VideoTextModel(Strict):
    """The video–text model evaluated: a CLIP size, ``visual``/``text`` overrides of its towers (as
    ``pretrain-mm`` names them), and its weights: a pretrain-mm job's checkpoint, or a CLIP file
    (whose towers have no UniBlocks: those start as the identity they are initialised to)."""

    size: Literal["ViT-B/16", "ViT-L/14"] = "ViT-B/16"
    visual: dict[str, Any] = Field(default_factory=dict)
    text: dict[str, Any] = Field(default_factory=dict)
    init: InputPath = Field(min_length=1)

    def clip_config(self) -> VideoCLIPConfig:
        return video_clip_config(self.size, visual=self.visual, text=self.text)


class VideoTextEvalConfig(EvalJobConfig):
    model: VideoTextModel
    test: Views = Field(default_factory=lambda: Views(clips=1, crops=1))  # a video's embedding: its views' mean

    @model_validator(mode="after")
    def _buildable(self) -> "VideoTextEvalConfig":
        try:
            self.model.clip_config()
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        check_views(self)
        return self


@dataclass(frozen=True)
class VideoWithTexts:
    """A video's test views and its texts (captions, or a question's candidates) as token ids padded
    to ``max_texts`` rows: ``video`` (views, T, S, S, 3), ``tokens`` (max_texts, context), ``num_texts``,
    ``label`` (a question's answer)."""

    spec: ClipSpec
    clips: int
    crops: int
    context_length: int
    max_texts: int

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        record = records[sample_id]
        tokens = np.zeros((self.max_texts, self.context_length), dtype=np.int64)
        tokens[:len(record.captions)] = default_tokenizer().tokenize(list(record.captions), self.context_length).numpy()
        return {"video": load_test_views(record, self.spec, self.clips, self.crops), "tokens": tokens,
                "num_texts": np.int64(len(record.captions)), "label": np.int64(record.label)}


class VideoTextEvaluation(EvaluationTask[VideoTextEvalConfig]):
    """The model, the clips, and a video's embedding; each kind adds what it scores. A kind that
    ``reads_texts`` gets each record's texts (captions, candidates) with its views."""

    encoder = "uniformerv2-clip"
    reads_texts: ClassVar[bool] = False

    def build_model(self) -> VideoCLIP:
        model = VideoCLIP(self.config.model.clip_config())
        load_initial_weights(model, self.config.model.init, allow_missing=UNIBLOCK_KEYS,
                             allow_unexpected=NOT_EVALUATED)
        return model

    def flops_per_sample(self, model: nn.Module) -> float:
        """Every view's frames through the video tower, and one text per caption through the text tower."""
        clip = self.config.model.clip_config()
        v, t = clip.visual, clip.text
        video = v.num_frames * transformer_flops(v.width, v.layers, v.grid**2 + 1, v.mlp_ratio)
        views = self.config.test.clips * self.config.test.crops
        return views * video + self.texts_per_sample * transformer_flops(t.width, t.layers, t.context_length,
                                                                           t.mlp_ratio)

    @functools.cached_property
    def texts_per_sample(self) -> int:
        """The most texts a record of the list has (every sample is padded to it); read once."""
        return max(len(r.captions) for r in self.config.data.val_source().read()) if self.reads_texts else 0

    def val_sample_fn(self) -> TestViewsOf | VideoWithTexts:
        visual, test = self.config.model.clip_config().visual, self.config.test
        spec = test_clip_spec(self.config, visual.num_frames, visual.image_size)
        if not self.reads_texts:
            return TestViewsOf(spec, test.clips, test.crops)
        context = self.config.model.clip_config().text.context_length
        return VideoWithTexts(spec, test.clips, test.crops, context, self.texts_per_sample)

    def check_captions(self, records: Sequence[VideoRecord], what: str) -> None:
        if any(not record.captions for record in records):
            raise ConfigError("data.format", f"{self.kind} needs {what} per video: use format "
                                             f"{'video_text' if what == 'captions' else 'multiple_choice'} "
                                             f"(got {self.config.data.format!r})")

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        clips, views = views_to_clips(batch, device, self.config.data.normalization, dtype)
        tensors = {"video": clips, "views": torch.tensor(views), "label": array_to_tensor(batch["label"], device)}
        for name in ("tokens", "num_texts"):
            if name in batch:
                tensors[name] = array_to_tensor(batch[name], device)
        return tensors


def video_embedding(model: VideoCLIP, batch: dict[str, Tensor]) -> Tensor:
    """Each video's unit embedding (B, D): its views' unit embeddings averaged, normalised again."""
    views = model.encode_video(batch["video"]).float().unflatten(0, (-1, int(batch["views"])))
    return F.normalize(views.mean(dim=1), dim=-1)


def text_embeddings(model: VideoCLIP, tokens: Tensor) -> Tensor:
    """Unit embeddings (B, K, D) of padded texts (B, K, context) (padding rows embed too; callers mask them)."""
    return model.encode_text(tokens.flatten(0, 1)).float().unflatten(0, tokens.shape[:2])
