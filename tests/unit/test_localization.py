"""Gaussian Soft-NMS over 1-D segments (tIoU: ``internvideo.metrics.temporal_iou``): hand cases, per-class independence, limits, and agreement with
the textbook loop written out in plain Python."""
from __future__ import annotations

import math

import pytest
import torch

from internvideo.models.localization import soft_nms


def test_scores_decay_with_overlap_and_the_order_follows_the_decayed_scores() -> None:
    segments = torch.tensor([[0.0, 10.0], [0.0, 9.0], [20.0, 30.0]])
    kept, scores, labels = soft_nms(segments, torch.tensor([0.9, 0.8, 0.5]), torch.zeros(3, dtype=torch.long))
    # B overlaps A with tIoU 0.9: 0.8 · exp(-0.81 / 0.5) ≈ 0.158 falls behind C, which overlaps nothing.
    torch.testing.assert_close(kept, segments[[0, 2, 1]])
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.5, 0.8 * math.exp(-0.81 / 0.5)]))
    assert labels.tolist() == [0, 0, 0]


def test_classes_do_not_suppress_each_other_and_limits_apply() -> None:
    segments = torch.tensor([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])
    kept, scores, labels = soft_nms(segments, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1]))
    assert labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8, 0.7 * math.exp(-1 / 0.5)]))
    _, scores, _ = soft_nms(segments, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 1]), min_score=0.2)
    assert scores.tolist() == pytest.approx([0.9, 0.8])  # 0.7 · e^-2 ≈ 0.095 is dropped
    kept, _, _ = soft_nms(segments, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 2]), max_segments=2)
    assert len(kept) == 2


def plain_soft_nms(segments, scores, labels, sigma, min_score):
    out = []
    for label in sorted(set(labels)):
        items = [(s, sc) for s, sc, lb in zip(segments, scores, labels) if lb == label]
        while items:
            best = max(range(len(items)), key=lambda i: items[i][1])
            (b0, b1), bs = items.pop(best)
            out.append((b0, b1, bs, label))
            decayed = []
            for (s0, s1), sc in items:
                inter = max(0.0, min(b1, s1) - max(b0, s0))
                iou = inter / ((b1 - b0) + (s1 - s0) - inter)
                sc *= math.exp(-iou * iou / sigma)
                if sc >= min_score:
                    decayed.append(((s0, s1), sc))
            items = decayed
    return sorted(out, key=lambda r: -r[2])


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_the_plain_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    starts = torch.rand(40, generator=generator, dtype=torch.float64) * 100
    segments = torch.stack([starts, starts + 1 + torch.rand(40, generator=generator, dtype=torch.float64) * 20], 1)
    scores = torch.rand(40, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=generator)
    kept, kept_scores, kept_labels = soft_nms(segments, scores, labels, sigma=0.5, min_score=0.01, max_segments=1000)
    expected = plain_soft_nms(segments.tolist(), scores.tolist(), labels.tolist(), 0.5, 0.01)
    assert kept_scores.tolist() == pytest.approx([r[2] for r in expected], abs=1e-12)
    torch.testing.assert_close(kept, torch.tensor([[r[0], r[1]] for r in expected], dtype=torch.float64))
    assert kept_labels.tolist() == [r[3] for r in expected]


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        soft_nms(torch.zeros(3), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1), sigma=0)
