"""Evaluation metrics shared by training-time validation and evaluation jobs.

Here: top-k and per-class classification accuracy, the confusion matrix, multi-view score averaging
(VideoMAE-style clips x crops testing), text<->video retrieval with several captions per video, the
dual-softmax re-scoring used by CAMoE/InternVideo retrieval, multiple-choice accuracy, and temporal
action detection mAP at tIoU thresholds (ActivityNet's interpolated average precision).

Conventions:

* Inputs are CPU tensors; every metric returns plain Python floats / lists / dicts, ready for JSON
  (``average_views`` and ``dual_softmax`` return tensors, since they feed the metrics).
* Accuracies are fractions in [0, 1]; retrieval recalls R@K are percentages in [0, 100], as papers report them.
* Classification ties count *against* the label: its rank is the number of other classes scoring
  greater than or equal to it, and it is within top-k if that rank is < k. A collapsed model that gives
  every class the same score therefore scores 0, not 100 %. k larger than the class count is clamped.
* Retrieval ties count *against* the true item too, so a collapsed model (all similarities equal) gets
  the worst ranks, not R@1 = 100 %. (This departs from the published benchmark code, CLIP4Clip and
  InternVideo, which ranks ties in the true item's favour; without ties the two agree.) Ranks are 1-based:
  a text->video rank is the number of videos whose similarity to the caption is >= its true video's,
  the true video included, i.e. 1 + the number of *other* videos scoring >= it. For video->text, the rank
  of each of video v's own captions c is 1 + the number of captions *not belonging to v* whose similarity
  to v is >= c's; v's other captions are not competitors, since only v's best caption counts. The video's
  rank is the best (smallest) of these, i.e. that of its most similar own caption. MdR is
  ``numpy.median`` of the ranks (the mean of the two middle ranks for an even count), MnR their mean.
* Detection: segments are ``(start, end)`` in seconds; tIoU is intersection over union of the two
  intervals. Predictions are matched in descending score (ties in the order given) to the
  ground truth of their video and class with the highest tIoU not yet matched at that threshold;
  a class's AP is the area under its precision–recall curve made monotone (ActivityNet's
  ``interpolated_prec_rec``); a class with ground truth but no prediction has AP 0.
* Bad input (shape mismatch, an index out of range, empty input, NaN scores) raises ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

_INTEGER_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
RECALL_KS = (1, 5, 10)


def _check_scores(name: str, scores: torch.Tensor) -> None:
    """Raise unless ``scores`` is a non-empty 2-D floating-point tensor without NaN."""
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(scores.shape)})")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {scores.dtype}")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contains NaN")


def _check_indices(name: str, indices: torch.Tensor, length: int | None = None, upper: int | None = None) -> None:
    """Raise unless ``indices`` is a non-empty 1-D integer tensor (of ``length`` entries, each in [0, upper))."""
    if indices.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(indices.shape)}")
    if indices.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"{name} must hold integers, got {indices.dtype}")
    if length is not None and indices.shape[0] != length:
        raise ValueError(f"{name} has {indices.shape[0]} entries, expected {length} (shape mismatch)")
    if indices.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if upper is not None:
        outside = indices[(indices < 0) | (indices >= upper)]
        if outside.numel():
            raise ValueError(f"{name} holds {outside.unique().tolist()}, outside the valid range [0, {upper})")


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Return ``{"top{k}": fraction of samples whose label is within the top k}`` for each k.

    ``scores`` is (N, C), ``labels`` (N,). Ties count against the label (see the module docstring);
    a k above C is clamped to C, so its accuracy is 1.0. Keys use the k as requested.
    """
    _check_scores("scores", scores)
    num_samples, num_classes = scores.shape
    _check_indices("labels", labels, num_samples, num_classes)
    ks = tuple(ks)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks}")
    label_scores = scores.gather(1, labels.long()[:, None])
    # >= includes the label's own score, hence the - 1.
    ranks = (scores >= label_scores).sum(dim=1) - 1
    return {f"top{k}": (ranks < min(k, num_classes)).double().mean().item() for k in ks}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Return, for each class, the fraction of its samples predicted correctly (``nan`` if it has none)."""
    _check_num_classes(num_classes)
    _check_indices("labels", labels, upper=num_classes)
    _check_indices("predictions", predictions, labels.shape[0], num_classes)
    labels = labels.long()
    samples = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[predictions.long() == labels], minlength=num_classes).double()
    return (correct / samples).tolist()  # 0 / 0 gives nan for a class without samples


def mean_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Return the mean of ``per_class_accuracy`` over the classes that have at least one sample."""
    return float(np.nanmean(per_class_accuracy(predictions, labels, num_classes)))


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Return the num_classes x num_classes count matrix: row = true class, column = predicted class."""
    _check_num_classes(num_classes)
    _check_indices("labels", labels, upper=num_classes)
    _check_indices("predictions", predictions, labels.shape[0], num_classes)
    cells = labels.long() * num_classes + predictions.long()
    return torch.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes).tolist()


def average_views(
    scores: torch.Tensor, video_ids: torch.Tensor, softmax: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(averaged (V, C), ids (V,))``: each video's views averaged, in ascending video id order.

    ``scores`` (N_views_total, C) holds one row per view (clip x crop); ``video_ids`` says whose view
    each row is. With ``softmax`` (as VideoMAE does) the views' softmax probabilities are averaged,
    otherwise the raw scores. A video averages however many views it has. Computed in at least float32.
    """
    _check_scores("scores", scores)
    _check_indices("video_ids", video_ids, scores.shape[0])
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if softmax:
        scores = scores.softmax(dim=1)
    ids, row_to_video, views_per_video = torch.unique(video_ids, sorted=True, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(ids), scores.shape[1], dtype=scores.dtype).index_add_(0, row_to_video, scores)
    return sums / views_per_video[:, None].to(scores.dtype), ids


def _rank_summary(prefix: str, ranks: torch.Tensor) -> dict[str, float]:
    """Return R@1/5/10 (percent), median rank and mean rank of 1-based ``ranks``."""
    ranks = ranks.numpy()
    summary = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks <= k)) for k in RECALL_KS}
    summary[f"{prefix}_medr"] = float(np.median(ranks))
    summary[f"{prefix}_meanr"] = float(np.mean(ranks))
    return summary


def retrieval_metrics(similarity: torch.Tensor, text_to_video: torch.Tensor) -> dict[str, float]:
    """Return text->video and video->text R@1/5/10 (percent), MdR and MnR.

    ``similarity`` is (T, V): row t a caption, column v a video; ``text_to_video[t]`` is the video
    caption t describes. A video may have several captions, and every video needs at least one.
    Ranks follow the module docstring: ties count against the true item (t->v rank = videos scoring >= the
    true one; v->t rank = 1 + captions of *other* videos scoring >= the video's best own caption).
    Memory stays O(T * V): no caption x caption matrix is formed.
    Keys: ``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_meanr`` and the same with ``v2t_``.
    """
    _check_scores("similarity", similarity)
    num_texts, num_videos = similarity.shape
    _check_indices("text_to_video", text_to_video, num_texts, num_videos)
    text_to_video = text_to_video.long()
    captions_per_video = torch.bincount(text_to_video, minlength=num_videos)
    if (captions_per_video == 0).any():
        uncaptioned = torch.nonzero(captions_per_video == 0).flatten().tolist()
        raise ValueError(f"videos {uncaptioned} have no caption in text_to_video; video->text ranks need one")

    true_similarity = similarity[torch.arange(num_texts), text_to_video]
    # >= includes the true video itself, so this count is already the 1-based rank.
    t2v_ranks = (similarity >= true_similarity[:, None]).sum(dim=1)
    # A caption's count of other-video captions scoring >= it falls as its similarity rises, so the best
    # rank among a video's captions is the rank of its most similar own caption.
    best_caption_similarity = torch.full((num_videos,), -torch.inf, dtype=similarity.dtype).scatter_reduce(
        0, text_to_video, true_similarity, reduce="amax"
    )
    # Count every caption scoring >= the best, then drop the video's own captions among them (those that
    # equal its best; at least the best itself), leaving only competitors from other videos.
    at_least_best = (similarity >= best_caption_similarity[None, :]).sum(dim=0)
    own_at_least_best = torch.bincount(
        text_to_video, weights=(true_similarity >= best_caption_similarity[text_to_video]).double(), minlength=num_videos
    ).long()
    v2t_ranks = 1 + at_least_best - own_at_least_best
    return {**_rank_summary("t2v", t2v_ranks), **_rank_summary("v2t", v2t_ranks)}


def dual_softmax(similarity: torch.Tensor, temperature: float = 100.0, dim: int = 0) -> torch.Tensor:
    """Return the (T, V) similarity re-scored by the dual softmax (CAMoE's DSL, used by InternVideo).

    The softmax of ``temperature * similarity`` along ``dim`` is the prior of the other side: along
    the captions (dim 0, for ranking videos by caption) it is each video's own preference among
    captions, and multiplying by it keeps a caption's score for a video only where the video also
    prefers that caption, which suppresses "hub" videos that score highly against every caption;
    along the videos (dim 1) it re-scores the other direction, video→text. It uses every test
    item at once (it is transductive), so report its results as "with DSL". ``temperature`` is
    CLIP's logit scale, 100 by default.
    """
    _check_scores("similarity", similarity)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return similarity * torch.softmax(similarity * temperature, dim=dim)


def dual_softmax_retrieval(similarity: torch.Tensor, text_to_video: torch.Tensor,
                           temperature: float = 100.0) -> dict[str, float]:
    """``retrieval_metrics`` after the dual softmax, each direction with its own prior: text→video
    ranks from the softmax over captions, video→text ranks from the softmax over videos."""
    t2v = retrieval_metrics(dual_softmax(similarity, temperature, dim=0), text_to_video)
    v2t = retrieval_metrics(dual_softmax(similarity, temperature, dim=1), text_to_video)
    return {**{k: v for k, v in t2v.items() if k.startswith("t2v_")}, **{k: v for k, v in v2t.items()
                                                                          if k.startswith("v2t_")}}


def multiple_choice_accuracy(scores: torch.Tensor, answers: torch.Tensor) -> float:
    """Return the fraction of questions whose answer option scores strictly above every other option.

    ``scores`` is (N, K) over each question's K options and ``answers`` (N,) the correct option; this is
    top-1 accuracy, so a tie with the answer counts as wrong.
    """
    _check_scores("scores", scores)
    _check_indices("answers", answers, *scores.shape)
    return topk_accuracy(scores, answers, ks=(1,))["top1"]


THUMOS_TIOUS = (0.3, 0.4, 0.5, 0.6, 0.7)
ACTIVITYNET_TIOUS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))


@dataclass(frozen=True)
class Segment:
    """An action instance (ground truth) or a detection (``score``) in one video, in seconds."""

    video: str
    label: int
    start: float
    end: float
    score: float = 1.0


def temporal_iou(segment: tuple[float, float], segments: np.ndarray) -> np.ndarray:
    """tIoU of ``(start, end)`` with each row of ``segments`` (N, 2)."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    inter = np.clip(np.minimum(segment[1], segments[:, 1]) - np.maximum(segment[0], segments[:, 0]), 0, None)
    union = (segment[1] - segment[0]) + (segments[:, 1] - segments[:, 0]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision–recall curve after making precision non-increasing in recall."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changed] - mrec[changed - 1]) * mprec[changed]))


def _class_average_precision(truth: Sequence[Segment], detections: Sequence[Segment],
                             thresholds: Sequence[float]) -> np.ndarray:
    """AP at each threshold of one class's detections against its ground truth."""
    if not detections:
        return np.zeros(len(thresholds))
    by_video: dict[str, list[int]] = {}
    for i, t in enumerate(truth):
        by_video.setdefault(t.video, []).append(i)
    bounds = np.array([(t.start, t.end) for t in truth], dtype=np.float64).reshape(-1, 2)
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)  # stable: ties keep their order
    tp = np.zeros((len(thresholds), len(order)))
    matched = np.zeros((len(thresholds), len(truth)), dtype=bool)
    for rank, i in enumerate(order):
        candidates = by_video.get(detections[i].video, [])
        if not candidates:
            continue
        tious = temporal_iou((detections[i].start, detections[i].end), bounds[candidates])
        for t, threshold in enumerate(thresholds):
            for j in np.argsort(-tious, kind="stable"):
                if tious[j] < threshold:
                    break
                if not matched[t, candidates[j]]:
                    matched[t, candidates[j]] = True
                    tp[t, rank] = 1
                    break
    tp_cum = np.cumsum(tp, axis=1)
    precision = tp_cum / np.arange(1, len(order) + 1)
    recall = tp_cum / len(truth)
    return np.array([interpolated_average_precision(precision[t], recall[t]) for t in range(len(thresholds))])


def detection_map(ground_truth: Sequence[Segment], detections: Sequence[Segment],
                  tiou_thresholds: Sequence[float] = THUMOS_TIOUS) -> dict[str, float]:
    """Temporal action detection: ``mAP@<t>`` (fractions) at each tIoU threshold, averaged over the
    classes that have ground truth, and ``average_mAP`` over the thresholds. Detections of classes
    without ground truth count nowhere (as in ActivityNet's evaluation)."""
    if not ground_truth:
        raise ValueError("ground_truth is empty")
    if not tiou_thresholds or not all(0 < t <= 1 for t in tiou_thresholds):
        raise ValueError(f"tIoU thresholds must be in (0, 1], got {list(tiou_thresholds)}")
    for name, segments in (("ground_truth", ground_truth), ("detections", detections)):
        bad = [s for s in segments if not (np.isfinite([s.start, s.end, s.score]).all() and s.end >= s.start)]
        if bad:
            raise ValueError(f"{name}: {len(bad)} segments with end < start or a non-finite value, e.g. {bad[0]}")
    classes = sorted({s.label for s in ground_truth})
    per_class = np.stack([_class_average_precision([s for s in ground_truth if s.label == c],
                                                   [s for s in detections if s.label == c], tiou_thresholds)
                          for c in classes])
    means = per_class.mean(axis=0)
    return {**{f"mAP@{t:g}": float(m) for t, m in zip(tiou_thresholds, means)}, "average_mAP": float(means.mean())}
