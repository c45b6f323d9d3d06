"""``eval-recognition``: a classifier's accuracy on a labelled list, tested as VideoMAE tests —
``test.clips`` windows spread over each video × ``test.crops`` squares along its long side, every
view's softmax averaged into the video's score (or the raw logits, ``test.average: logits``).

Reports top-1 and top-5 accuracy and the mean per-class accuracy (fractions), and, in the result's
details, each class's accuracy (by name when ``data.classes`` names them) and the confusion matrix
(rows: true class, columns: predicted).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import ClipSpec, load_test_views
from internvideo.data.transforms import normalize_clips
from internvideo.metrics import confusion_matrix, per_class_accuracy, topk_accuracy
from internvideo.tasks import register_task
from internvideo.tasks.base import (
    Evaluation,
    EvaluationTask,
    array_to_tensor,
    load_initial_weights,
    unwrap,
)
from internvideo.tasks.classification import (
    PRETRAINING_ONLY,
    ClassifierModel,
    build_classifier,
    forward_flops,
)
from internvideo.tasks.common import ConfigError, EvalJobConfig, Strict
from internvideo.tasks.paths import InputPath


class Views(Strict):
    clips: int = Field(5, gt=0)  # windows in time (dense sampling; segment sampling takes 1)
    crops: int = Field(3, gt=0)  # squares along the long side


class TestViews(Views):
    average: Literal["softmax", "logits"] = "softmax"  # what the views' average is taken of


class EvaluatedClassifier(ClassifierModel):
    init: InputPath = Field(min_length=1)  # the checkpoint evaluated: a file, a committed checkpoint, job:<id>


class RecognitionConfig(EvalJobConfig):
    model: EvaluatedClassifier
    test: TestViews = Field(default_factory=TestViews)

    @model_validator(mode="after")
    def _buildable(self) -> "RecognitionConfig":
        try:
            self.model.check_buildable(drop_path=0.0)
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        check_views(self)
        return self


def check_labelled(task: EvaluationTask) -> None:
    """Classification needs labelled videos: a caption or question list labels every video 0."""
    if task.config.data.format not in ("list", "ssv2"):
        raise ConfigError("data.format", f"{task.kind} needs labelled videos (list or ssv2), "
                                         f"not {task.config.data.format!r}")


def check_views(config: EvalJobConfig) -> None:
    """Segment sampling has one view in time."""
    if config.data.sampler == "segment" and config.test.clips != 1:
        raise ValueError(f"test.clips: segment sampling tests one clip in time, not {config.test.clips}")


@dataclass(frozen=True)
class TestViewsOf:
    """A labelled video's test views: ``video`` uint8 (views, T, S, S, 3) and its ``label``."""

    spec: ClipSpec
    clips: int
    crops: int

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        record = records[sample_id]
        return {"video": load_test_views(record, self.spec, self.clips, self.crops), "label": np.int64(record.label)}


def test_clip_spec(config: EvalJobConfig, num_frames: int, input_size: int) -> ClipSpec:
    data = config.data
    return ClipSpec(num_frames=num_frames, sampling_rate=data.sampling_rate, input_size=input_size,
                    seed=config.eval.seed, decode=data.decode_options(input_size), sampler=data.sampler)


def views_to_clips(batch: dict[str, np.ndarray], device: torch.device, normalization: str,
                   dtype: torch.dtype) -> tuple[Tensor, int]:
    """A micro-batch's views (B, views, T, S, S, 3) as normalised clips (B · views, 3, T, S, S), and
    the number of views per video."""
    video = array_to_tensor(batch["video"], device)
    return normalize_clips(video.flatten(0, 1), normalization).to(dtype), video.shape[1]


@register_task
class EvalRecognition(EvaluationTask[RecognitionConfig]):
    kind = "eval-recognition"
    encoder = "classifier"
    config_type = RecognitionConfig

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.config.data.classes is not None:
            self.config.data.class_names(self.config.model.num_classes)

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        check_labelled(self)
        labels = {r.label for r in records}
        if max(labels) >= self.config.model.num_classes or min(labels) < 0:
            raise ConfigError("model.num_classes", f"{self.config.model.num_classes} classes, but the list has "
                                                   f"labels from {min(labels)} to {max(labels)}")

    def build_model(self) -> nn.Module:
        model = build_classifier(self.config.model, drop_path=0.0)
        # Every key must fit: no head is made up for a model under test.
        load_initial_weights(model, self.config.model.init, allow_unexpected=PRETRAINING_ONLY)
        return model

    def flops_per_sample(self, model: nn.Module) -> float:
        return forward_flops(unwrap(model)) * self.config.test.clips * self.config.test.crops

    def val_sample_fn(self) -> TestViewsOf:
        model = self.config.model
        spec = test_clip_spec(self.config, model.num_frames, model.img_size)
        return TestViewsOf(spec, self.config.test.clips, self.config.test.crops)

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        clips, views = views_to_clips(batch, device, self.config.data.normalization, dtype)
        return {"video": clips, "views": torch.tensor(views), "label": array_to_tensor(batch["label"], device)}

    def predict(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each video's score: its views' softmax (or logits), averaged."""
        logits = model(batch["video"]).float()
        views = logits.unflatten(0, (-1, int(batch["views"])))  # (B, views, C)
        if self.config.test.average == "softmax":
            views = views.softmax(dim=-1)
        return {"scores": views.mean(dim=1), "label": batch["label"]}

    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        num_classes = self.config.model.num_classes
        names = (self.config.data.class_names(num_classes) if self.config.data.classes
                 else [str(c) for c in range(num_classes)])
        return classification_evaluation(outputs["scores"], outputs["label"], names, self.config.test, folder)


# Beyond this many classes the confusion matrix goes to a file in the job's folder, not into the job
# record (710 classes would be half a million counts in every GetJob).
INLINE_CONFUSION_CLASSES = 64


def classification_evaluation(scores: np.ndarray, labels: np.ndarray, class_names: list[str], views: Views,
                              folder: Path) -> Evaluation:
    """Top-1/top-5 and mean per-class accuracy of per-video class ``scores`` (N, C); each class's
    accuracy (None for a class with no video) and the confusion matrix (rows: true class) in the
    details — for many classes, the path of ``confusion_matrix.json`` in ``folder`` instead."""
    scores_t, labels_t = torch.from_numpy(scores), torch.from_numpy(labels)
    num_classes = len(class_names)
    predictions = scores_t.argmax(dim=1)
    per_class = per_class_accuracy(predictions, labels_t, num_classes)
    metrics = topk_accuracy(scores_t, labels_t, ks=(1, 5) if num_classes > 5 else (1,))
    metrics["mean_class_accuracy"] = float(np.nanmean(per_class))
    confusion = confusion_matrix(predictions, labels_t, num_classes)
    details: dict = {"per_class_accuracy": {name: None if math.isnan(a) else a for name, a in zip(class_names, per_class)},
                     "views": {"clips": views.clips, "crops": views.crops}}
    if num_classes <= INLINE_CONFUSION_CLASSES:
        details["confusion_matrix"] = confusion
    else:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "confusion_matrix.json").write_text(json.dumps({"classes": class_names, "matrix": confusion}))
        details["confusion_matrix_file"] = str(folder / "confusion_matrix.json")
    return Evaluation(metrics, details)
