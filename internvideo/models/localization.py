"""Temporal action localisation on extracted clip features: post-processing shared by the
localisation head (ActionFormer-style, anchor-free) and its evaluation.

``soft_nms``: Gaussian Soft-NMS over 1-D segments (Bodla et al.; ActionFormer's default): instead of
dropping every segment that overlaps a kept one, each later segment's score decays by
``exp(-tIoU² / sigma)`` against the segment just kept, and segments whose score falls under
``min_score`` are dropped. Run per class (``labels``), as ActionFormer's multi-class NMS does.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from internvideo.metrics import temporal_iou


def soft_nms(segments: Tensor, scores: Tensor, labels: Tensor, *, sigma: float = 0.5, min_score: float = 0.001,
             max_segments: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian Soft-NMS per class. ``segments`` (N, 2) in any unit, ``scores`` (N,), ``labels`` (N,).
    Returns the kept (segments, decayed scores, labels), best first, at most ``max_segments``."""
    if segments.ndim != 2 or segments.shape[1] != 2 or not (len(segments) == len(scores) == len(labels)):
        raise ValueError(f"segments (N, 2), scores (N,) and labels (N,) expected, got {tuple(segments.shape)}, "
                         f"{tuple(scores.shape)}, {tuple(labels.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    all_segments, all_scores, all_labels = (t.detach().cpu().numpy() for t in (segments, scores, labels))
    kept: list[tuple[float, int]] = []  # (decayed score, row)
    for label in np.unique(all_labels):
        rows = np.flatnonzero(all_labels == label)
        left = all_scores[rows].astype(np.float64)
        while len(rows):
            best = int(np.argmax(left))
            kept.append((float(left[best]), int(rows[best])))
            rest = np.arange(len(rows)) != best
            overlap = temporal_iou(tuple(all_segments[rows[best]]), all_segments[rows[rest]])
            rows, left = rows[rest], left[rest] * np.exp(-overlap**2 / sigma)
            rows, left = rows[left >= min_score], left[left >= min_score]
    kept = sorted(kept, key=lambda k: -k[0])[:max_segments]  # stable: equal scores keep their order
    index = torch.tensor([row for _, row in kept], dtype=torch.long)
    return segments[index], torch.tensor([score for score, _ in kept], dtype=scores.dtype), labels[index]
