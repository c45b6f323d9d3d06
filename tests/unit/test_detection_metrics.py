"""Temporal action detection mAP: hand-computed cases, and agreement with a plain re-implementation
(greedy matching by tIoU, AP as the mean over true positives of the best precision at or after them)."""
from __future__ import annotations

import numpy as np
import pytest

from internvideo.metrics import (
    ACTIVITYNET_TIOUS,
    THUMOS_TIOUS,
    Segment,
    detection_map,
    interpolated_average_precision,
    temporal_iou,
)


def test_temporal_iou_by_hand() -> None:
    tious = temporal_iou((0.0, 10.0), np.array([[5, 15], [10, 20], [0, 10], [2, 4], [-5, 0]]))
    np.testing.assert_allclose(tious, [5 / 15, 0.0, 1.0, 0.2, 0.0])


def test_interpolated_average_precision_by_hand() -> None:
    # Ranks: hit, miss, hit of 3 instances → precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3; the envelope
    # lifts recall (1/3, 2/3] to 2/3: AP = 1/3 · 1 + 1/3 · 2/3 + 1/3 · 0.
    ap = interpolated_average_precision(np.array([1.0, 0.5, 2 / 3]), np.array([1 / 3, 1 / 3, 2 / 3]))
    assert ap == pytest.approx(1 / 3 + 2 / 9)


def test_detection_map_by_hand() -> None:
    truth = [Segment("v1", 0, 0, 10), Segment("v1", 0, 20, 30), Segment("v2", 0, 5, 15)]
    detections = [Segment("v1", 0, 0, 10, 0.9),   # tIoU 1.0: a hit at every threshold
                  Segment("v1", 0, 0, 9, 0.8),    # tIoU 0.9 with an instance already taken: a false positive
                  Segment("v2", 0, 6, 15, 0.7),   # tIoU 0.9
                  Segment("v1", 0, 21, 29, 0.6),  # tIoU 0.8
                  Segment("v1", 1, 0, 10, 0.99)]  # a class without ground truth counts nowhere
    result = detection_map(truth, detections, (0.5, 0.95))
    # At 0.5: precision 1, 1/2, 2/3, 3/4 at recall 1/3, 1/3, 2/3, 1 → AP = 1/3 · 1 + 2/3 · 3/4.
    assert result["mAP@0.5"] == pytest.approx(1 / 3 + 1 / 2)
    # At 0.95 only the exact detection hits: AP = 1/3.
    assert result["mAP@0.95"] == pytest.approx(1 / 3)
    assert result["average_mAP"] == pytest.approx((5 / 6 + 1 / 3) / 2)


def test_a_class_without_detections_has_ap_zero_and_perfect_detections_have_one() -> None:
    truth = [Segment("a", 0, 1, 3), Segment("b", 1, 4, 9)]
    assert detection_map(truth, [Segment("a", 0, 1, 3, 0.5)], (0.5,))["mAP@0.5"] == pytest.approx(0.5)
    perfect = detection_map(truth, [Segment(s.video, s.label, s.start, s.end, 1.0) for s in truth], ACTIVITYNET_TIOUS)
    assert perfect["average_mAP"] == 1.0 and len(perfect) == len(ACTIVITYNET_TIOUS) + 1


def plain_map(truth: list[Segment], detections: list[Segment], thresholds) -> list[float]:
    """The same metric written out the long way: each detection, best score first, takes the
    not-yet-taken instance of its video and class it overlaps most, and hits if that overlap reaches
    the threshold; AP is the mean over the instances of the best precision at or after each hit."""
    def tiou(a: Segment, b: Segment) -> float:
        inter = max(0.0, min(a.end, b.end) - max(a.start, b.start))
        return inter / ((a.end - a.start) + (b.end - b.start) - inter)

    out = []
    for threshold in thresholds:
        aps = []
        for label in sorted({s.label for s in truth}):
            gt = [s for s in truth if s.label == label]
            dets = sorted([d for d in detections if d.label == label], key=lambda d: -d.score)
            taken, hits = set(), []
            for d in dets:
                free = [(tiou(d, g), j) for j, g in enumerate(gt) if g.video == d.video and j not in taken]
                overlap, j = max(free, default=(0.0, None))
                hits.append(j is not None and overlap >= threshold)
                if hits[-1]:
                    taken.add(j)
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            aps.append(sum(max(precision[k:]) for k in range(len(hits)) if hits[k]) / len(gt))
        out.append(float(np.mean(aps)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_a_plain_reimplementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth, detections = [], []
    for v in range(6):
        for _ in range(rng.integers(1, 4)):  # separated instances: ties in which to match do not arise
            start = float(rng.uniform(0, 100))
            truth.append(Segment(f"v{v}", int(rng.integers(0, 3)), start, start + float(rng.uniform(2, 10))))
    for t in truth:  # noisy copies of the truth, and proposals at random
        for _ in range(rng.integers(0, 3)):
            jitter = rng.normal(0, 1.5, 2)
            detections.append(Segment(t.video, t.label, t.start + jitter[0], t.end + abs(jitter[1]) + 0.1,
                                      float(rng.uniform())))
    for _ in range(10):
        start = float(rng.uniform(0, 100))
        detections.append(Segment(f"v{rng.integers(0, 6)}", int(rng.integers(0, 3)), start,
                                  start + float(rng.uniform(1, 10)), float(rng.uniform())))
    result = detection_map(truth, detections, THUMOS_TIOUS)
    expected = plain_map(truth, detections, THUMOS_TIOUS)
    np.testing.assert_allclose([result[f"mAP@{t:g}"] for t in THUMOS_TIOUS], expected, atol=1e-12)


def test_bad_segments_are_refused() -> None:
    with pytest.raises(ValueError, match="end < start"):
        detection_map([Segment("a", 0, 5, 1)], [])
    with pytest.raises(ValueError, match="empty"):
        detection_map([], [])
    with pytest.raises(ValueError, match="thresholds"):
        detection_map([Segment("a", 0, 0, 1)], [], (0.0,))
