"""``eval-multiple-choice``: zero-shot multiple choice (MSR-VTT MC style) — of each question's
candidate captions the model picks the one most similar to the video (``multiple_choice`` format:
``{"video", "candidates", "answer"}``). Reports accuracy (a tie with the answer counts as wrong).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from internvideo.data.lists import VideoRecord
from internvideo.metrics import multiple_choice_accuracy
from internvideo.models.clip import VideoCLIP
from internvideo.tasks import register_task
from internvideo.tasks.base import Evaluation
from internvideo.tasks.common import ConfigError
from internvideo.tasks.video_language import (
    VideoTextEvalConfig,
    VideoTextEvaluation,
    text_embeddings,
    video_embedding,
)


@register_task
class EvalMultipleChoice(VideoTextEvaluation):
    kind = "eval-multiple-choice"
    config_type = VideoTextEvalConfig
    reads_texts = True

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        if self.config.data.format != "multiple_choice":
            raise ConfigError("data.format", f"{self.kind} reads questions: use format multiple_choice "
                                             f"(got {self.config.data.format!r})")

    def predict(self, model: VideoCLIP, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each candidate's cosine with the video, × 100; a padding row scores -inf."""
        video, texts = video_embedding(model, batch), text_embeddings(model, batch["tokens"])
        scores = 100.0 * (texts @ video[:, :, None]).squeeze(-1)  # (B, K)
        padding = torch.arange(scores.shape[1], device=scores.device)[None, :] >= batch["num_texts"][:, None]
        return {"scores": scores.masked_fill(padding, -torch.inf), "answer": batch["label"]}

    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        scores, answers = torch.from_numpy(outputs["scores"]), torch.from_numpy(outputs["answer"])
        return Evaluation({"accuracy": multiple_choice_accuracy(scores, answers)},
                          {"questions": len(answers),
                           "candidates_per_question": float(np.isfinite(outputs["scores"]).sum(axis=1).mean())})
