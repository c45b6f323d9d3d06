"""``eval-zero-shot``: classify videos the model never saw labels for — each class name goes through
prompt templates into the text tower (CLIP's prompt ensemble: every template's unit embedding
averaged), and a video's class scores are its embedding's cosine with each class's, × 100.

``data.classes`` names the list's classes (line i: class i; ``_`` reads as a space); ``templates``
are Kinetics' by default. Reports what ``eval-recognition`` does: top-1/top-5, mean per-class
accuracy, each class's accuracy and the confusion matrix.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from internvideo.data.lists import VideoRecord
from internvideo.models.clip import KINETICS_TEMPLATES, VideoCLIP, zero_shot_classifier
from internvideo.models.tokenizer import default_tokenizer
from internvideo.tasks import register_task
from internvideo.tasks.base import Evaluation
from internvideo.tasks.common import ConfigError
from internvideo.tasks.eval_recognition import check_labelled, classification_evaluation
from internvideo.tasks.video_language import VideoTextEvalConfig, VideoTextEvaluation, video_embedding


class ZeroShotConfig(VideoTextEvalConfig):
    templates: list[str] = Field(default_factory=lambda: list(KINETICS_TEMPLATES), min_length=1)

    @field_validator("templates")
    @classmethod
    def _fillable(cls, templates: list[str]) -> list[str]:
        unfillable = [t for t in templates if "{}" not in t]
        if unfillable:
            raise ValueError(f"every template needs a {{}} for the class name: {unfillable[:3]}")
        return templates

    @model_validator(mode="after")
    def _named(self) -> "ZeroShotConfig":
        if self.data.classes is None:
            raise ValueError("data.classes: Field required (the class names the prompts are made of)")
        return self


@register_task
class EvalZeroShot(VideoTextEvaluation):
    kind = "eval-zero-shot"
    config_type = ZeroShotConfig

    def __init__(self, config: ZeroShotConfig) -> None:
        super().__init__(config)
        self._classes: tuple[int, Tensor] | None = None  # (id of the model, its class embeddings)

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        check_labelled(self)
        names = self.config.data.class_names()
        labels = {r.label for r in records}
        if min(labels) < 0 or max(labels) >= len(names):
            raise ConfigError("data.classes", f"{len(names)} class names, but the list has labels from "
                                              f"{min(labels)} to {max(labels)}")

    def predict(self, model: VideoCLIP, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"scores": 100.0 * video_embedding(model, batch) @ self._class_embeddings(model).t(),
                "label": batch["label"]}

    def _class_embeddings(self, model: VideoCLIP) -> Tensor:
        """Computed once per model (a worker evaluates one)."""
        if self._classes is None or self._classes[0] != id(model):
            names = [name.replace("_", " ") for name in self.config.data.class_names()]
            embeddings = zero_shot_classifier(model, default_tokenizer(), names, tuple(self.config.templates))
            self._classes = (id(model), embeddings.float())
        return self._classes[1]

    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        return classification_evaluation(outputs["scores"], outputs["label"], self.config.data.class_names(),
                                         self.config.test, folder)
