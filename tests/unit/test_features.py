"""Extracted features in ActionFormer's layout: windows, the feature↔time mapping, files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from internvideo.data.features import FeatureGrid, read_features, write_features


def test_windows_and_times_by_hand() -> None:
    grid = FeatureGrid(fps=30.0, stride=4, window=16, num_frames=100)
    assert grid.count == 22  # starts 0, 4, ..., 84: the last window ends at frame 100
    assert grid.starts()[[0, 1, -1]].tolist() == [0, 4, 84]
    # Feature g sits at the centre of its window: (4g + 8) / 30 s; ActionFormer's grid of a time t is
    # (30 t − 8) / 4.
    np.testing.assert_allclose(grid.to_seconds([0, 1, 21]), [8 / 30, 12 / 30, 92 / 30])
    np.testing.assert_allclose(grid.to_grid([8 / 30, 1.0]), [0.0, (30 - 8) / 4])
    seconds = np.array([0.0, 0.5, 2.7, 3.3])
    np.testing.assert_allclose(grid.to_seconds(grid.to_grid(seconds)), seconds)
    assert FeatureGrid(fps=25, stride=8, window=16, num_frames=10).count == 1  # shorter than a window


def test_files_round_trip_and_bad_input_is_refused(tmp_path: Path) -> None:
    grid = FeatureGrid(fps=25.0, stride=8, window=16, num_frames=64)
    features = np.random.default_rng(0).normal(size=(grid.count, 32))
    path = write_features(tmp_path, "video_007", features, grid)
    assert path.name == "video_007.npy" and np.load(path).shape == (7, 32) and np.load(path).dtype == np.float32
    loaded, loaded_grid = read_features(tmp_path, "video_007")
    np.testing.assert_allclose(loaded, features.astype(np.float32))
    assert loaded_grid == grid
    with pytest.raises(ValueError, match=r"expected \(7, C\)"):
        write_features(tmp_path, "short", features[:3], grid)
    with pytest.raises(ValueError, match="cannot name a file"):
        write_features(tmp_path, "../escape", features, grid)
    with pytest.raises(ValueError, match="must be positive"):
        FeatureGrid(fps=25.0, stride=0, window=16, num_frames=64)
    np.save(tmp_path / "video_007.npy", features[:2].astype(np.float32))
    with pytest.raises(ValueError, match="its grid says 7"):
        read_features(tmp_path, "video_007")
