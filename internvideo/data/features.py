"""Clip features of untrimmed videos, in the layout temporal localisation heads consume
(ActionFormer's): one ``<video id>.npy`` per video holding a (T, C) float32 array — feature ``i`` of
the window of ``window`` frames starting at frame ``i · stride`` — and beside it ``<video id>.json``
with the grid that maps features to time.

The mapping is ActionFormer's: a feature sits at the centre of its window, so a time ``t`` in
seconds is at grid position ``(t · fps − window / 2) / stride`` and grid position ``g`` at
``(g · stride + window / 2) / fps`` seconds. A video shorter than one window has one feature (its
window padded by the clip sampler).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FeatureGrid:
    fps: float  # frames per second of the decoded video
    stride: int  # frames between the starts of consecutive windows
    window: int  # frames each feature sees
    num_frames: int  # frames of the video

    def __post_init__(self) -> None:
        if not (self.fps > 0 and self.stride > 0 and self.window > 0 and self.num_frames > 0):
            raise ValueError(f"fps, stride, window and num_frames must be positive: {self}")

    @property
    def count(self) -> int:
        """Windows that fit the video (at least one)."""
        return max(1, 1 + (self.num_frames - self.window) // self.stride)

    def starts(self) -> np.ndarray:
        """First frame of each window."""
        return np.arange(self.count) * self.stride

    def to_grid(self, seconds: np.ndarray | float) -> np.ndarray:
        return (np.asarray(seconds, dtype=np.float64) * self.fps - 0.5 * self.window) / self.stride

    def to_seconds(self, grid: np.ndarray | float) -> np.ndarray:
        return (np.asarray(grid, dtype=np.float64) * self.stride + 0.5 * self.window) / self.fps


def write_features(folder: Path, video_id: str, features: np.ndarray, grid: FeatureGrid) -> Path:
    """Save one video's (T, C) features and their grid; returns the ``.npy`` path."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != grid.count:
        raise ValueError(f"{video_id}: features of shape {features.shape}, expected ({grid.count}, C) for {grid}")
    if "/" in video_id or video_id in ("", ".", ".."):
        raise ValueError(f"video id {video_id!r} cannot name a file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{video_id}.npy"
    np.save(path, features)
    (folder / f"{video_id}.json").write_text(json.dumps(asdict(grid)))
    return path


def read_features(folder: Path, video_id: str) -> tuple[np.ndarray, FeatureGrid]:
    grid = FeatureGrid(**json.loads((folder / f"{video_id}.json").read_text()))
    features = np.load(folder / f"{video_id}.npy")
    if len(features) != grid.count:
        raise ValueError(f"{folder / video_id}.npy holds {len(features)} features, its grid says {grid.count}")
    return features, grid
