"""``eval-localization``: how well extracted features localise actions in untrimmed videos — an
anchor-free head in ActionFormer's shape (``internvideo.models.localization``) trained on the
features of the annotation's training subset, and its detections on the validation subset scored by
mAP at each tIoU threshold (THUMOS' 0.3…0.7 or ActivityNet's 0.5…0.95) and their average.

Its data: ``data.features``, the folder an ``extract-features`` job wrote (``job:<id>``) or any
folder in that layout, and the ActivityNet-format annotation as both lists (``train_list``,
``val_list``) with ``train_subset`` / ``val_subset``. Classes: the annotation's labels, sorted.
A training video longer than ``model.max_length`` features is cut at a random window each epoch;
a validation video is cut at ``max_length`` (its later actions count as missed).
Validation reports ``mAP@<t>`` and ``average_mAP`` (fractions).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.decode import DecodeError
from internvideo.data.features import read_features
from internvideo.data.formats import VideoSource, read_activitynet
from internvideo.data.lists import VideoRecord
from internvideo.data.pipeline import sample_rng
from internvideo.metrics import ACTIVITYNET_TIOUS, THUMOS_TIOUS, Segment, detection_map
from internvideo.models.localization import LocalizationConfig, LocalizationHead, detect, localization_loss
from internvideo.tasks import register_task
from internvideo.tasks.base import StepEngine, Task, array_to_tensor, check_weights_path, unwrap
from internvideo.tasks.common import ConfigError, JobConfig, Strict, TrainingData
from internvideo.tasks.paths import InputPath


class FeatureData(TrainingData):
    format: Literal["activitynet"] = "activitynet"
    features: InputPath = Field(min_length=1)  # <video id>.npy / .json per video, or job:<id> of extract-features
    train_subset: str = "training"
    val_subset: str = "validation"

    def source(self) -> VideoSource:
        return VideoSource("activitynet", self.train_list, self.root, subset=self.train_subset)

    def val_source(self) -> VideoSource | None:
        return VideoSource("activitynet", self.val_list, self.root, subset=self.val_subset) if self.val_list else None


class HeadSection(Strict):
    dim: int = Field(128, gt=0)
    levels: int = Field(4, ge=1, le=8)
    heads: int = Field(4, gt=0)
    head_layers: int = Field(2, ge=0)
    center_sample: float = Field(1.5, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int = Field(256, gt=0)  # feature positions per video (a multiple of 2 ** (levels - 1))
    max_segments: int = Field(64, gt=0)  # actions per video learnt


class DetectionSection(Strict):
    tious: Literal["thumos", "activitynet"] = "thumos"
    sigma: float = Field(0.5, gt=0)  # Soft-NMS
    min_score: float = Field(0.001, ge=0)
    max_segments: int = Field(100, gt=0)  # detections kept per video


class LocalizationEvalConfig(JobConfig):
    data: FeatureData
    model: HeadSection = Field(default_factory=HeadSection)
    test: DetectionSection = Field(default_factory=DetectionSection)

    @model_validator(mode="after")
    def _fits(self) -> "LocalizationEvalConfig":
        if self.model.max_length % 2 ** (self.model.levels - 1):
            raise ValueError(f"model.max_length ({self.model.max_length}) must be a multiple of "
                             f"2 ** (levels - 1) = {2 ** (self.model.levels - 1)}")
        if self.model.dim % self.model.heads:
            raise ValueError(f"model.heads ({self.model.heads}) must divide model.dim ({self.model.dim})")
        return self


@dataclass(frozen=True)
class FeatureClip:
    """A video's features (C, max_length) with their ``mask``, its actions on the feature grid
    (``segments`` (max_segments, 2), ``labels``, ``count``) and the grid (``fps``, ``stride``,
    ``window``, ``offset``: the first position kept) to map detections back to seconds."""

    folder: str
    actions: dict[str, tuple[tuple[float, float, int], ...]]  # video path → (start s, end s, class id)
    max_length: int
    max_segments: int
    seed: int
    train: bool

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        path = records[sample_id].path
        try:
            features, grid = read_features(Path(self.folder), Path(path).stem)
        except (OSError, ValueError) as err:
            raise DecodeError(path, "missing", f"no features in {self.folder}: {err}") from None
        length = len(features)
        offset = 0
        if self.train and length > self.max_length:
            offset = int(sample_rng(self.seed, epoch, sample_id).integers(length - self.max_length + 1))
        kept = features[offset:offset + self.max_length]
        padded = np.zeros((features.shape[1], self.max_length), dtype=np.float32)
        padded[:, :len(kept)] = kept.T
        mask = np.zeros(self.max_length, dtype=bool)
        mask[:len(kept)] = True
        segments = np.zeros((self.max_segments, 2), dtype=np.float32)
        labels = np.zeros(self.max_segments, dtype=np.int64)
        count = 0
        for start, end, label in self.actions.get(path, ()):
            on_grid = grid.to_grid(np.array([start, end])) - offset
            on_grid = on_grid.clip(0, len(kept))
            if on_grid[1] - on_grid[0] > 0 and count < self.max_segments:
                segments[count], labels[count], count = on_grid, label, count + 1
        return {"features": padded, "mask": mask, "segments": segments, "labels": labels, "count": np.int64(count),
                "grid": np.array([grid.fps, grid.stride, grid.window, offset], dtype=np.float64),
                "video_index": np.int64(sample_id)}


@register_task
class EvalLocalization(Task[LocalizationEvalConfig]):
    kind = "eval-localization"
    encoder = "localization-head"
    config_type = LocalizationEvalConfig
    validates = True

    def check_inputs(self) -> None:
        check_weights_path("data.features", self.config.data.features)
        super().check_inputs()
        if self.config.data.val_list is None:
            raise ConfigError("data.val_list", "the annotation whose validation subset is scored")

    # -- the annotation -------------------------------------------------------------------------
    @functools.cached_property
    def _annotation(self) -> tuple[list[str], dict[str, tuple[tuple[float, float, int], ...]]]:
        """Class names (sorted) and every video's actions, from both lists' annotation files."""
        data = self.config.data
        videos = [v for path in dict.fromkeys(p for p in (data.train_list, data.val_list) if p)
                  for v in read_activitynet(path, data.root)]
        classes = sorted({s.label for v in videos for s in v.segments})
        ids = {name: i for i, name in enumerate(classes)}
        return classes, {v.path: tuple((s.start, s.end, ids[s.label]) for s in v.segments) for v in videos}

    def check_records(self, records: Sequence[VideoRecord]) -> None:
        if not self._annotation[0]:
            raise ConfigError("data.train_list", "the annotation has no action segments")

    # -- model ----------------------------------------------------------------------------------
    def head_config(self) -> LocalizationConfig:
        model = self.config.model
        feature_dim = read_feature_dim(self.config.data.features, self.config.data.source().read())
        return LocalizationConfig(feature_dim=feature_dim, num_classes=len(self._annotation[0]), dim=model.dim,
                                  levels=model.levels, heads=model.heads, head_layers=model.head_layers,
                                  center_sample=model.center_sample, dropout=model.dropout)

    def build_model(self) -> LocalizationHead:
        torch.manual_seed(self.config.train.seed)
        return LocalizationHead(self.head_config())

    def flops_per_sample(self, model: nn.Module) -> float:
        """An upper bound: every weight applied at every input position, forward and backward."""
        return 6.0 * sum(p.numel() for p in unwrap(model).parameters()) * self.config.model.max_length

    # -- data -----------------------------------------------------------------------------------
    def _clip(self, train: bool) -> FeatureClip:
        model = self.config.model
        return FeatureClip(self.config.data.features, self._annotation[1], model.max_length, model.max_segments,
                           self.config.train.seed, train)

    def sample_fn(self) -> FeatureClip:
        return self._clip(train=True)

    def val_sample_fn(self) -> FeatureClip:
        return self._clip(train=False)

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        tensors = {name: array_to_tensor(batch[name], device) for name in ("features", "mask", "segments", "labels",
                                                                             "count", "grid", "video_index")}
        tensors["features"] = tensors["features"].to(dtype)
        return tensors

    # -- training and validation ----------------------------------------------------------------
    def loss(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        predictions = model(batch["features"], batch["mask"])
        return localization_loss(unwrap(model), predictions, batch["features"].shape[-1], batch["segments"],
                                 batch["labels"], batch["count"])

    def predict(self, model: StepEngine | nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each video's detections in seconds, padded to ``test.max_segments`` rows (score 0)."""
        test = self.config.test
        found = detect(unwrap(model), model(batch["features"], batch["mask"]), batch["mask"], sigma=test.sigma,
                       min_score=test.min_score, max_segments=test.max_segments)
        segments = torch.zeros(len(found), test.max_segments, 2, dtype=torch.float64)
        scores = torch.zeros(len(found), test.max_segments, dtype=torch.float64)
        labels = torch.zeros(len(found), test.max_segments, dtype=torch.long)
        for b, (positions, score, label) in enumerate(found):
            fps, stride, window, offset = batch["grid"][b].tolist()
            seconds = ((positions.double() + offset) * stride + 0.5 * window) / fps  # FeatureGrid.to_seconds
            segments[b, :len(score)], scores[b, :len(score)], labels[b, :len(score)] = seconds, score, label
        return {"segments": segments, "scores": scores, "labels": labels, "video_index": batch["video_index"]}

    def validation_metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        records = self.config.data.val_source().read()
        actions = self._annotation[1]
        truth = [Segment(r.path, label, start, end) for r in records for start, end, label in actions.get(r.path, ())]
        detections = [Segment(records[int(v)].path, int(label), float(s[0]), float(s[1]), float(score))
                      for v, segs, scores, labels in zip(outputs["video_index"], outputs["segments"],
                                                         outputs["scores"], outputs["labels"])
                      for s, score, label in zip(segs, scores, labels) if score > 0]
        tious = THUMOS_TIOUS if self.config.test.tious == "thumos" else ACTIVITYNET_TIOUS
        return detection_map(truth, detections, tious)


def read_feature_dim(folder: str, records: Sequence[VideoRecord]) -> int:
    """The channels of the first video's features that exist (every video's must match)."""
    for record in records:
        path = Path(folder) / f"{Path(record.path).stem}.npy"
        if path.is_file():
            return int(np.load(path, mmap_mode="r").shape[1])
    raise ConfigError("data.features", f"{folder} holds features of none of the {len(records)} training videos")
