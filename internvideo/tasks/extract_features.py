"""``extract-features``: clip features of untrimmed videos, for temporal localisation heads — every
window of ``model.num_frames`` frames (every ``data.sampling_rate``-th) starting every
``windows.stride`` frames, through an encoder from ``model.init`` (its pooled feature: what a
classifier's head reads), written one file per video in ActionFormer's layout with the grid that maps
features to seconds (``internvideo.data.features``).

A sample is ``windows.chunk`` consecutive windows of one video (a long video is many samples), so
samples stay one size and shard like any other evaluation's; the chunks are planned from each
video's frame count, read once when the job starts. The files go to ``windows.output`` (default:
the job's own folder), which becomes the job's final checkpoint: a localisation job names the
features as ``job:<id>``.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from internvideo.data.decode import DecodeError, DecodeOptions, VideoInfo, probe_video, read_clip
from internvideo.data.features import FeatureGrid, write_features
from internvideo.data.lists import VideoRecord
from internvideo.data.transforms import normalize_clips, spatial_views
from internvideo.tasks import register_task
from internvideo.tasks.base import Evaluation, EvaluationTask, array_to_tensor, load_initial_weights, unwrap
from internvideo.tasks.classification import PRETRAINING_ONLY, ClassifierModel, build_classifier, forward_flops
from internvideo.tasks.common import EvalJobConfig, Strict
from internvideo.tasks.paths import InputPath, OutputPath


class FeatureEncoder(Strict):
    """The encoder whose features are extracted (its head, if the checkpoint has one, is not used)."""

    encoder: Literal["videomae", "clip"] = "videomae"
    size: str = "base"
    img_size: int = Field(224, gt=0)
    num_frames: int = Field(16, gt=0)
    overrides: dict[str, Any] = Field(default_factory=dict)
    init: InputPath = Field(min_length=1)

    def classifier(self) -> ClassifierModel:
        # Any class count builds the encoder and its pooling; the extractor removes the head.
        return ClassifierModel(encoder=self.encoder, size=self.size, img_size=self.img_size,
                               num_frames=self.num_frames, num_classes=2, overrides=self.overrides, init=self.init)


class FeatureWindows(Strict):
    stride: int = Field(16, gt=0)  # frames between the starts of consecutive windows
    chunk: int = Field(16, gt=0)  # windows per sample
    output: OutputPath | None = None  # the features' folder; None: <the job's folder>/features


class ExtractFeaturesConfig(EvalJobConfig):
    model: FeatureEncoder
    windows: FeatureWindows = Field(default_factory=FeatureWindows)

    @model_validator(mode="after")
    def _buildable(self) -> "ExtractFeaturesConfig":
        try:
            self.model.classifier().check_buildable(drop_path=0.0)
        except ValueError as err:
            raise ValueError(f"model: {err}") from None
        return self


@dataclass(frozen=True)
class Chunk:
    """Windows ``first … first + count - 1`` of record ``video``; or, a video that could not even be
    probed, no window and the ``failure`` (reason, detail) its sample raises — so that it is skipped
    and counted like any video that cannot be decoded."""

    video: int
    first: int
    count: int
    failure: tuple[str, str] | None = None


@dataclass(frozen=True)
class WindowChunks:
    """Sample ``i`` is ``chunks[i]``: its windows' frames centre-cropped, ``video`` uint8 (chunk, T, S, S, 3)
    (a short last chunk repeats its last window: ``num_windows`` says how many are real)."""

    chunks: tuple[Chunk, ...]
    windows_per_sample: int
    num_frames: int
    sampling_rate: int
    stride: int
    input_size: int
    decode: DecodeOptions

    def record_index(self, sample_id: int) -> int:
        return self.chunks[sample_id].video

    def __call__(self, records: Sequence[VideoRecord], epoch: int, sample_id: int) -> dict[str, np.ndarray]:
        chunk = self.chunks[sample_id]
        if chunk.failure is not None:
            raise DecodeError(records[chunk.video].path, *chunk.failure)
        starts = (chunk.first + np.arange(self.windows_per_sample).clip(max=chunk.count - 1)) * self.stride
        wanted = starts[:, None] + np.arange(self.num_frames)[None, :] * self.sampling_rate  # (chunk, T)
        in_video: list[np.ndarray] = []

        def frames(n: int) -> np.ndarray:  # each frame decoded once; past the end, the last frame again
            in_video.append(wanted.clip(max=n - 1))  # per backend tried: the last one decoded
            return np.unique(in_video[-1])

        decoded = spatial_views(read_clip(records[chunk.video].path, frames, self.decode), self.input_size, 1)[0]
        rows = np.searchsorted(np.unique(in_video[-1]), in_video[-1])  # (chunk, T) rows of ``decoded``
        return {"video": decoded[rows], "num_windows": np.int64(chunk.count), "video_index": np.int64(chunk.video),
                "first_window": np.int64(chunk.first)}


@register_task
class ExtractFeatures(EvaluationTask[ExtractFeaturesConfig]):
    kind = "extract-features"
    encoder = "feature-extractor"
    config_type = ExtractFeaturesConfig

    def build_model(self) -> nn.Module:
        spec = self.config.model.classifier()
        model = build_classifier(spec, drop_path=0.0)
        model.head = nn.Identity()  # never run: a checkpoint's head, of whatever size, is left out
        load_initial_weights(model, spec.init, allow_missing=("fc_norm.*",),
                             allow_unexpected=(*PRETRAINING_ONLY, "head.*"))
        return model

    def flops_per_sample(self, model: nn.Module) -> float:
        return forward_flops(unwrap(model)) * self.config.windows.chunk

    @property
    def span(self) -> int:
        """Frames a window covers."""
        return (self.config.model.num_frames - 1) * self.config.data.sampling_rate + 1

    @functools.cached_property
    def _videos(self) -> list[tuple[VideoRecord, VideoInfo | DecodeError]]:
        """Every video of the list with its frame count and rate, or why it cannot be read."""
        decode = self.config.data.decode_options(self.config.model.img_size)
        out: list[tuple[VideoRecord, VideoInfo | DecodeError]] = []
        for record in self.config.data.val_source().read():
            try:
                out.append((record, probe_video(record.path, decode)))
            except DecodeError as err:
                out.append((record, err))
        return out

    def grid(self, info: VideoInfo) -> FeatureGrid:
        return FeatureGrid(fps=info.fps, stride=self.config.windows.stride, window=self.span,
                           num_frames=info.num_frames)

    def sample_count(self, records: Sequence[VideoRecord]) -> int:
        return len(self._chunks)

    def plan_key(self, records: Sequence[VideoRecord]) -> str:
        """The chunks too: a video probed otherwise on a later start (a timeout under load) moves them."""
        return hashlib.sha256(repr((super().plan_key(records), self._chunks)).encode()).hexdigest()

    @functools.cached_property
    def _chunks(self) -> tuple[Chunk, ...]:
        per_sample = self.config.windows.chunk
        chunks: list[Chunk] = []
        for video, (_, info) in enumerate(self._videos):
            if isinstance(info, DecodeError):
                chunks.append(Chunk(video, 0, 0, (info.reason, info.detail)))
                continue
            count = self.grid(info).count
            chunks += [Chunk(video, first, min(per_sample, count - first)) for first in range(0, count, per_sample)]
        return tuple(chunks)

    def val_sample_fn(self) -> WindowChunks:
        model, data = self.config.model, self.config.data
        return WindowChunks(self._chunks, self.config.windows.chunk, model.num_frames, data.sampling_rate,
                            self.config.windows.stride, model.img_size, data.decode_options(model.img_size))

    def to_tensors(self, batch: dict[str, np.ndarray], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        video = array_to_tensor(batch["video"], device)  # (B, chunk, T, S, S, 3)
        clips = normalize_clips(video.flatten(0, 1), self.config.data.normalization).to(dtype)
        return {"video": clips, **{k: array_to_tensor(batch[k], device) for k in ("num_windows", "video_index",
                                                                                  "first_window")}}

    def predict(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = model.features(batch["video"]).float()
        return {"features": features.unflatten(0, (len(batch["num_windows"]), -1)),
                **{k: batch[k] for k in ("num_windows", "video_index", "first_window")}}

    def evaluate(self, outputs: dict[str, np.ndarray], folder: Path) -> Evaluation:
        """One ``<video>.npy`` (windows, C) and ``<video>.json`` (its grid) per video into ``folder``
        (or ``windows.output``)."""
        folder = Path(self.config.windows.output) if self.config.windows.output else folder / "features"
        by_video: dict[int, list[tuple[int, np.ndarray]]] = {}
        for features, count, video, first in zip(outputs["features"], outputs["num_windows"], outputs["video_index"],
                                                  outputs["first_window"]):
            by_video.setdefault(int(video), []).append((int(first), features[:count]))
        written = 0
        for video, parts in sorted(by_video.items()):
            record, info = self._videos[video]
            grid = self.grid(info)
            features = np.concatenate([f for _, f in sorted(parts, key=lambda part: part[0])])
            if len(features) != grid.count:  # a chunk of it could not be decoded
                continue
            write_features(folder, Path(record.path).stem, features, grid)
            written += 1
        return Evaluation({"videos": float(written), "windows": float(sum(len(p[1]) for parts in by_video.values()
                                                                          for p in parts)),
                           "feature_dim": float(outputs["features"].shape[-1])},
                          {"folder": str(folder)}, artifacts=str(folder))
