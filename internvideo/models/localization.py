"""Temporal action localisation on extracted clip features: post-processing shared by the
localisation head (ActionFormer-style, anchor-free) and its evaluation.

``soft_nms``: Gaussian Soft-NMS over 1-D segments (Bodla et al.; ActionFormer's default): instead of
dropping every segment that overlaps a kept one, each later segment's score decays by
``exp(-tIoU² / sigma)`` against the segment just kept, and segments whose score falls under
``min_score`` are dropped. Run per class (``labels``), as ActionFormer's multi-class NMS does.
"""
from __future__ import annotations

import torch
from torch import Tensor


def segment_iou(segment: Tensor, segments: Tensor) -> Tensor:
    """tIoU of one (2,) segment with each of (N, 2)."""
    inter = (torch.minimum(segment[1], segments[:, 1]) - torch.maximum(segment[0], segments[:, 0])).clamp(min=0)
    union = (segment[1] - segment[0]) + (segments[:, 1] - segments[:, 0]) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def soft_nms(segments: Tensor, scores: Tensor, labels: Tensor, *, sigma: float = 0.5, min_score: float = 0.001,
             max_segments: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian Soft-NMS per class. ``segments`` (N, 2) in any unit, ``scores`` (N,), ``labels`` (N,).
    Returns the kept (segments, decayed scores, labels), best first, at most ``max_segments``."""
    if segments.ndim != 2 or segments.shape[1] != 2 or not (len(segments) == len(scores) == len(labels)):
        raise ValueError(f"segments (N, 2), scores (N,) and labels (N,) expected, got {tuple(segments.shape)}, "
                         f"{tuple(scores.shape)}, {tuple(labels.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    kept_segments, kept_scores, kept_labels = [], [], []
    for label in labels.unique():
        rows = labels == label
        boxes, left = segments[rows].double(), scores[rows].double().clone()
        while len(left):
            best = int(torch.argmax(left))
            kept_segments.append(boxes[best])
            kept_scores.append(left[best])
            kept_labels.append(label)
            rest = torch.arange(len(left)) != best
            boxes, left = boxes[rest], left[rest] * torch.exp(-segment_iou(boxes[best], boxes[rest]) ** 2 / sigma)
            boxes, left = boxes[left >= min_score], left[left >= min_score]
    if not kept_scores:
        return segments[:0], scores[:0], labels[:0]
    order = torch.argsort(torch.stack(kept_scores), descending=True, stable=True)[:max_segments]
    return (torch.stack(kept_segments)[order].to(segments.dtype), torch.stack(kept_scores)[order].to(scores.dtype),
            torch.stack(kept_labels)[order])
