"""``eval-retrieval``: text→video and video→text retrieval over a captioned list (``video_text``
format; a video may have several captions). Every caption ranks every video, every video every
caption: R@1/5/10 (percent), median and mean rank, each direction; a video's rank is that of its
best-placed own caption. ``dual_softmax: true`` also reports the same after CAMoE's dual softmax
(``dsl_`` prefix; each direction re-scored by the other side's prior), which uses every test item at
once — a transductive re-scoring, labelled so.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from internvideo.data.lists import VideoRecord
from internvideo.metrics import dual_softmax_retrieval, retrieval_metrics
from internvideo.models.clip import VideoCLIP
from internvideo.tasks import register_task
from internvideo.tasks.base import Evaluation
from internvideo.tasks.video_language import (
    VideoTextEvalConfig,
    VideoTextEvaluation,
    text_embeddings,
    video_embedding,
)


class RetrievalConfig(VideoTextEvalConfig):
    dual_softmax: bool = False


@register_task
class EvalRetrieval(VideoTextEvaluation):
    kind = "eval-retrieval"
    config_type = RetrievalConfig
    reads_texts = True

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        self.check_captions(records, "captions")

    def predict(self, model: VideoCLIP, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"video": video_embedding(model, batch), "texts": text_embeddings(model, batch["tokens"]),
                "num_texts": batch["num_texts"]}

    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        video, texts, counts = (torch.from_numpy(outputs[k]) for k in ("video", "texts", "num_texts"))
        captioned = torch.arange(texts.shape[1])[None, :] < counts[:, None]  # (N, K): real captions, not padding
        text_to_video = torch.arange(len(video))[:, None].expand_as(captioned)[captioned]
        similarity = texts[captioned] @ video.t()  # (captions, videos)
        metrics = retrieval_metrics(similarity, text_to_video)
        if self.config.dual_softmax:
            rescored = dual_softmax_retrieval(similarity, text_to_video)
            metrics.update({f"dsl_{name}": value for name, value in rescored.items()})
        return Evaluation(metrics, {"videos": len(video), "captions": len(text_to_video)})
