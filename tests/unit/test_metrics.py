"""Evaluation metrics: hand-computed cases, a brute-force retrieval reference, tie rules, invariance, bad input."""
from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from internvideo.metrics import (
    average_views,
    confusion_matrix,
    dual_softmax,
    dual_softmax_retrieval,
    mean_class_accuracy,
    multiple_choice_accuracy,
    per_class_accuracy,
    retrieval_metrics,
    topk_accuracy,
)

RETRIEVAL_KEYS = [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("r1", "r5", "r10", "medr", "meanr")]


# --- top-k ---------------------------------------------------------------------------------------


def test_topk_accuracy_by_hand():
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],  # label 3 has the highest score: rank 0
            [0.4, 0.1, 0.3, 0.2, 0.6, 0.5],  # label 2 (0.3): 0.4, 0.6, 0.5 are higher -> rank 3
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # label 0 has the lowest score: rank 5
        ]
    )
    labels = torch.tensor([3, 2, 0])
    # top1: rank 0 only -> 1/3; top3: rank < 3 -> still 1/3; top4: ranks 0, 3 -> 2/3; top5: 2/3; top6: all.
    result = topk_accuracy(scores, labels, ks=(1, 3, 4, 5, 6))
    assert result == pytest.approx({"top1": 1 / 3, "top3": 1 / 3, "top4": 2 / 3, "top5": 2 / 3, "top6": 1.0})
    assert list(topk_accuracy(scores, labels)) == ["top1", "top5"]
    json.dumps(result)


def test_topk_ties_count_against_the_label():
    # Label 0 ties with class 1, so one other class scores >= it: rank 1 -> wrong at top1, right at top2.
    assert topk_accuracy(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0]), ks=(1, 2)) == {"top1": 0.0, "top2": 1.0}
    # A collapsed model (every class the same score) is never top-1 correct.
    assert topk_accuracy(torch.zeros(4, 10), torch.arange(4), ks=(1,)) == {"top1": 0.0}


def test_topk_k_above_class_count_is_clamped():
    # 3 classes, k = 5 clamps to 3: every label is within the top 3, even the lowest-scored one.
    scores = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert topk_accuracy(scores, torch.tensor([0, 2]), ks=(1, 5)) == {"top1": 0.0, "top5": 1.0}


# --- per-class accuracy and confusion matrix -----------------------------------------------------

PREDICTIONS = torch.tensor([0, 1, 1, 2, 2, 2])
LABELS = torch.tensor([0, 0, 1, 2, 2, 1])


def test_per_class_accuracy_by_hand():
    # class 0: samples 0, 1 predicted 0, 1 -> 1/2; class 1: samples 2, 5 predicted 1, 2 -> 1/2;
    # class 2: samples 3, 4 both predicted 2 -> 1; class 3: no sample -> nan.
    accuracies = per_class_accuracy(PREDICTIONS, LABELS, num_classes=4)
    assert accuracies[:3] == pytest.approx([0.5, 0.5, 1.0])
    assert math.isnan(accuracies[3])
    # Mean over the 3 classes present: (0.5 + 0.5 + 1) / 3.
    assert mean_class_accuracy(PREDICTIONS, LABELS, num_classes=4) == pytest.approx(2 / 3)


def test_confusion_matrix_by_hand():
    # Rows true class, columns predicted: (true, predicted) pairs (0,0) (0,1) (1,1) (2,2) (2,2) (1,2).
    assert confusion_matrix(PREDICTIONS, LABELS, num_classes=4) == [
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 2, 0],
        [0, 0, 0, 0],
    ]


# --- multi-view averaging ------------------------------------------------------------------------


def test_average_views_raw_scores_by_hand():
    scores = torch.tensor([[1.0, 0.0], [2.0, 4.0], [3.0, 2.0], [4.0, 0.0], [5.0, 5.0]])
    video_ids = torch.tensor([7, 3, 7, 3, 5])
    averaged, ids = average_views(scores, video_ids, softmax=False)
    assert ids.tolist() == [3, 5, 7]
    # video 3: rows 1, 3 -> [(2+4)/2, (4+0)/2]; video 5: row 4; video 7: rows 0, 2 -> [(1+3)/2, (0+2)/2].
    assert averaged.tolist() == [[3.0, 2.0], [5.0, 5.0], [2.0, 1.0]]


def test_average_views_averages_softmax_probabilities():
    # softmax([0, 0]) = [1/2, 1/2]; softmax([ln 3, 0]) = [3/4, 1/4]; their mean is [5/8, 3/8].
    # (Averaging the logits first would give softmax([ln 3 / 2, 0]) = [0.634, 0.366] instead.)
    scores = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    averaged, ids = average_views(scores, torch.tensor([0, 0]))
    assert ids.tolist() == [0]
    assert averaged[0].tolist() == pytest.approx([0.625, 0.375])


# --- retrieval -----------------------------------------------------------------------------------


def test_retrieval_by_hand():
    similarity = torch.tensor([[0.9, 0.1], [0.2, 0.5], [0.4, 0.4]])
    text_to_video = torch.tensor([0, 0, 1])  # video 0 has captions 0 and 1, video 1 has caption 2
    # t2v rank = number of videos scoring >= the true one (itself included):
    #   caption 0 -> video 0 (0.9): only itself is >= 0.9: rank 1;
    #   caption 1 -> video 0 (0.2): itself and video 1 (0.5) are >= 0.2: rank 2;
    #   caption 2 -> video 1 (0.4): itself and video 0 (0.4, a tie, which counts against it): rank 2.
    #   Ranks [1, 2, 2]: R@1 = 1/3, R@5 = R@10 = 3/3, median 2, mean 5/3.
    # v2t rank = 1 + captions of *other* videos scoring >= the video's best own caption:
    #   video 0's column [0.9, 0.2, 0.4], best own caption 0 (0.9); caption 2 (0.4) is below it: rank 1;
    #   video 1's column [0.1, 0.5, 0.4], own caption 2 (0.4); caption 1 (0.5) is >= it, caption 0 not: rank 2.
    #   Ranks [1, 2]: R@1 = 1/2, median = mean = 1.5.
    assert retrieval_metrics(similarity, text_to_video) == pytest.approx(
        {
            "t2v_r1": 100 / 3, "t2v_r5": 100.0, "t2v_r10": 100.0, "t2v_medr": 2.0, "t2v_meanr": 5 / 3,
            "v2t_r1": 50.0, "v2t_r5": 100.0, "v2t_r10": 100.0, "v2t_medr": 1.5, "v2t_meanr": 1.5,
        }
    )


def test_retrieval_v2t_ignores_own_captions_but_counts_ties_with_others():
    similarity = torch.tensor([[0.7, 0.2], [0.7, 0.3], [0.1, 0.3]])
    text_to_video = torch.tensor([0, 0, 1])  # video 0 has captions 0 and 1, video 1 has caption 2
    # t2v: caption 0 -> 0.7 vs 0.2, caption 1 -> 0.7 vs 0.3, caption 2 -> 0.3 vs 0.1: only the true video
    #   is >= each, so ranks [1, 1, 1].
    # v2t: video 0's column [0.7, 0.7, 0.1]: its own captions 0 and 1 tie, but a video's own captions are not
    #   competitors; the only other caption (2, 0.1) is below 0.7: rank 1 (counting own captions would give 2).
    #   Video 1's column [0.2, 0.3, 0.3]: caption 1 (video 0's) ties its own caption 2 at 0.3: rank 2.
    #   Ranks [1, 2]: R@1 = 1/2, median = mean = 1.5.
    assert retrieval_metrics(similarity, text_to_video) == pytest.approx(
        {
            "t2v_r1": 100.0, "t2v_r5": 100.0, "t2v_r10": 100.0, "t2v_medr": 1.0, "t2v_meanr": 1.0,
            "v2t_r1": 50.0, "v2t_r5": 100.0, "v2t_r10": 100.0, "v2t_medr": 1.5, "v2t_meanr": 1.5,
        }
    )


def test_retrieval_recall_boundaries_by_hand():
    # 12 captions, caption t describes video t. similarity[t][v] = 1 if v <= t else 0, so caption t's true
    # video scores 1 and ties with the t videos before it, which count against it: t2v rank t + 1, i.e. 1..12.
    # Video v's column is 1 for captions t >= v: its own caption v plus the 11 - v later captions of other
    # videos, which tie it and count against it: rank 12 - v, i.e. 12..1.
    # Over ranks 1..12: R@1 = 1/12, R@5 = 5/12, R@10 = 10/12 (in %), median = mean = 6.5.
    n = 12
    similarity = torch.tensor([[1.0 if v <= t else 0.0 for v in range(n)] for t in range(n)])
    expected = {"r1": 100 / 12, "r5": 500 / 12, "r10": 1000 / 12, "medr": 6.5, "meanr": 6.5}
    result = retrieval_metrics(similarity, torch.arange(n))
    assert result == pytest.approx({f"{d}_{m}": value for d in ("t2v", "v2t") for m, value in expected.items()})
    assert list(result) == RETRIEVAL_KEYS


@pytest.mark.parametrize(
    "text_to_video",
    [[0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 1, 2, 2], list(range(12)), [0, 0, 0, 0]],
    ids=["2-captions-each", "uneven-captions", "1-caption-each", "single-video"],
)
def test_retrieval_ties_count_against_the_true_item(text_to_video):
    # A collapsed model: every embedding equal, so every similarity is equal. Every video ties the true one,
    # so each t2v rank is V; every caption of another video ties a video's best own caption, so video v's
    # v2t rank is (T - its caption count) + 1. Only the trivial single video still ranks first.
    num_texts, num_videos = len(text_to_video), max(text_to_video) + 1
    embedding = torch.ones(8)
    similarity = (embedding.repeat(num_texts, 1) @ embedding.repeat(num_videos, 1).T) / 8
    result = retrieval_metrics(similarity, torch.tensor(text_to_video))
    t2v_ranks = [num_videos] * num_texts
    v2t_ranks = [num_texts - text_to_video.count(v) + 1 for v in range(num_videos)]
    for prefix, ranks in (("t2v", t2v_ranks), ("v2t", v2t_ranks)):
        for k in (1, 5, 10):
            assert result[f"{prefix}_r{k}"] == pytest.approx(100.0 * sum(rank <= k for rank in ranks) / len(ranks))
        assert result[f"{prefix}_medr"] == pytest.approx(statistics.median(ranks))
        assert result[f"{prefix}_meanr"] == pytest.approx(statistics.mean(ranks))
    if num_videos == 1:
        assert result["t2v_r1"] == result["v2t_r1"] == 100.0
    else:
        assert result["t2v_r1"] == result["v2t_r1"] == 0.0


def brute_force_retrieval(similarity: list[list[float]], text_to_video: list[int]) -> dict[str, float]:
    """The documented definitions with plain loops: per-caption ranks, then each video's best caption.

    Ties count against the true item (>=); for video->text a video's own captions are not competitors.
    """
    num_texts, num_videos = len(similarity), len(similarity[0])
    t2v_ranks = []
    for t in range(num_texts):
        true = similarity[t][text_to_video[t]]
        # The true video itself satisfies >=, so this count is the 1-based rank.
        t2v_ranks.append(sum(1 for v in range(num_videos) if similarity[t][v] >= true))
    v2t_ranks = []
    for v in range(num_videos):
        caption_ranks = []
        for t in range(num_texts):
            if text_to_video[t] == v:
                own = similarity[t][v]
                competitors = [other for other in range(num_texts) if text_to_video[other] != v]
                caption_ranks.append(1 + sum(1 for other in competitors if similarity[other][v] >= own))
        v2t_ranks.append(min(caption_ranks))
    result = {}
    for prefix, ranks in (("t2v", t2v_ranks), ("v2t", v2t_ranks)):
        for k in (1, 5, 10):
            result[f"{prefix}_r{k}"] = 100.0 * sum(1 for rank in ranks if rank <= k) / len(ranks)
        result[f"{prefix}_medr"] = statistics.median(ranks)
        result[f"{prefix}_meanr"] = sum(ranks) / len(ranks)
    return result


def random_retrieval_case(seed: int, num_texts: int = 60, num_videos: int = 17) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities on a coarse grid (many ties), several captions per video, every video captioned."""
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.randint(0, 6, (num_texts, num_videos), generator=generator).float() / 5
    extra = torch.randint(0, num_videos, (num_texts - num_videos,), generator=generator)
    text_to_video = torch.cat([torch.arange(num_videos), extra])[torch.randperm(num_texts, generator=generator)]
    return similarity, text_to_video


@pytest.mark.parametrize("seed", range(5))
def test_retrieval_matches_brute_force(seed):
    similarity, text_to_video = random_retrieval_case(seed)
    expected = brute_force_retrieval(similarity.tolist(), text_to_video.tolist())
    assert retrieval_metrics(similarity, text_to_video) == pytest.approx(expected)


def test_retrieval_is_invariant_to_reordering_videos_and_captions():
    similarity, text_to_video = random_retrieval_case(seed=7)
    reference = retrieval_metrics(similarity, text_to_video)
    generator = torch.Generator().manual_seed(8)
    # Column j of the permuted matrix is old video order[j], so old video v moves to new_index[v].
    order = torch.randperm(similarity.shape[1], generator=generator)
    new_index = torch.empty_like(order)
    new_index[order] = torch.arange(len(order))
    assert retrieval_metrics(similarity[:, order], new_index[text_to_video]) == pytest.approx(reference)
    rows = torch.randperm(similarity.shape[0], generator=generator)
    assert retrieval_metrics(similarity[rows], text_to_video[rows]) == pytest.approx(reference)


# --- dual softmax --------------------------------------------------------------------------------


def test_dual_softmax_by_hand():
    # temperature ln 3: column 0 is [1, 0] -> softmax over captions of [ln 3, 0] = [3/4, 1/4];
    # column 1 is [2, 1] -> softmax of [2 ln 3, ln 3] = [9, 3] / 12 = [3/4, 1/4]. Multiply elementwise.
    similarity = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    rescored = dual_softmax(similarity, temperature=math.log(3.0))
    assert rescored.flatten().tolist() == pytest.approx([0.75, 1.5, 0.0, 0.25])


def test_dual_softmax_suppresses_a_hub_video():
    # Video 0 is the raw favourite of both captions, but it prefers caption 0 (0.9 vs 0.85) far more than
    # video 1 distinguishes its two captions (0.8 vs 0.8): after re-scoring caption 1 goes to video 1.
    similarity = torch.tensor([[0.9, 0.8], [0.85, 0.8]])
    text_to_video = torch.tensor([0, 1])
    assert retrieval_metrics(similarity, text_to_video)["t2v_r1"] == 50.0
    assert retrieval_metrics(dual_softmax(similarity), text_to_video)["t2v_r1"] == 100.0


def test_dual_softmax_rescores_video_to_text_with_the_captions_prior():
    # Caption 0 is the raw favourite of both videos (0.9, 0.85), but it prefers video 0 (0.9 vs 0.85)
    # far more than caption 1 tells its videos apart (0.8 vs 0.8): after re-scoring along the videos,
    # video 1 finds its own caption first. Along the captions (the t2v prior) nothing changes for v2t:
    # a column times its own positive softmax keeps its order.
    similarity = torch.tensor([[0.9, 0.85], [0.8, 0.8]])
    text_to_video = torch.tensor([0, 1])
    assert retrieval_metrics(similarity, text_to_video)["v2t_r1"] == 50.0
    assert retrieval_metrics(dual_softmax(similarity, dim=0), text_to_video)["v2t_r1"] == 50.0
    assert dual_softmax_retrieval(similarity, text_to_video)["v2t_r1"] == 100.0
    both = dual_softmax_retrieval(similarity, text_to_video)
    assert {k: v for k, v in both.items() if k.startswith("t2v_")} == {
        k: v for k, v in retrieval_metrics(dual_softmax(similarity, dim=0), text_to_video).items() if k.startswith("t2v_")}


# --- multiple choice -----------------------------------------------------------------------------


def test_multiple_choice_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
    # Right (1 is highest), wrong (0 beats 2), right (2 is highest), wrong (0 ties the answer): 2 / 4.
    assert multiple_choice_accuracy(scores, torch.tensor([1, 2, 2, 0])) == 0.5


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: retrieval_metrics(torch.rand(3, 2), torch.tensor([0, 1])), "text_to_video has 2 entries, expected 3"),
        (lambda: retrieval_metrics(torch.rand(3, 2), torch.tensor([0, 1, 2])), r"holds \[2\], outside .*\[0, 2\)"),
        (lambda: retrieval_metrics(torch.rand(3, 2), torch.tensor([0, -1, 1])), r"holds \[-1\], outside"),
        (lambda: retrieval_metrics(torch.rand(0, 2), torch.tensor([], dtype=torch.long)), "similarity is empty"),
        (lambda: retrieval_metrics(torch.rand(3, 3), torch.tensor([0, 0, 2])), r"videos \[1\] have no caption"),
        (lambda: retrieval_metrics(torch.rand(3), torch.tensor([0, 1, 2])), "similarity must be 2-D"),
        (lambda: retrieval_metrics(torch.rand(2, 2), torch.tensor([0.0, 1.0])), "must hold integers"),
        (lambda: retrieval_metrics(torch.tensor([[math.nan]]), torch.tensor([0])), "contains NaN"),
        (lambda: topk_accuracy(torch.rand(4, 3), torch.tensor([0, 1, 2])), "labels has 3 entries, expected 4"),
        (lambda: topk_accuracy(torch.rand(2, 3), torch.tensor([0, 3])), r"labels holds \[3\], outside"),
        (lambda: topk_accuracy(torch.rand(0, 3), torch.tensor([], dtype=torch.long)), "scores is empty"),
        (lambda: topk_accuracy(torch.rand(2, 3), torch.tensor([0, 1]), ks=(0,)), "positive integers"),
        (lambda: per_class_accuracy(torch.tensor([0]), torch.tensor([0, 1]), 2), "predictions has 1 entries"),
        (lambda: per_class_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2),
         "labels is empty"),
        (lambda: confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 2), r"predictions holds \[5\]"),
        (lambda: mean_class_accuracy(torch.tensor([0]), torch.tensor([0]), 0), "num_classes must be >= 1"),
        (lambda: average_views(torch.rand(3, 2), torch.tensor([0, 1])), "video_ids has 2 entries, expected 3"),
        (lambda: dual_softmax(torch.rand(2, 2), temperature=0.0), "temperature must be positive"),
        (lambda: multiple_choice_accuracy(torch.rand(2, 4), torch.tensor([0, 4])), r"answers holds \[4\]"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- agreement with torchmetrics (continuous scores: no ties, where tie rules could differ) ----------


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_recalls_agree_with_torchmetrics_hit_rate(seed):
    from torchmetrics.retrieval import RetrievalHitRate

    generator = torch.Generator().manual_seed(seed)
    num_texts, num_videos = 50, 20
    similarity = torch.randn(num_texts, num_videos, generator=generator)
    text_to_video = torch.cat([torch.arange(num_videos),
                               torch.randint(0, num_videos, (num_texts - num_videos,), generator=generator)])
    ours = retrieval_metrics(similarity, text_to_video)
    relevant = text_to_video[:, None] == torch.arange(num_videos)[None, :]  # (T, V)
    for k in (1, 5, 10):
        # Each caption a query over the videos; each video a query over the captions (a hit: any own caption).
        t2v = RetrievalHitRate(top_k=k)(similarity.flatten(), relevant.flatten(),
                                        indexes=torch.arange(num_texts)[:, None].expand(-1, num_videos).flatten())
        v2t = RetrievalHitRate(top_k=k)(similarity.t().flatten(), relevant.t().flatten(),
                                        indexes=torch.arange(num_videos)[:, None].expand(-1, num_texts).flatten())
        assert ours[f"t2v_r{k}"] == pytest.approx(100.0 * t2v.item())
        assert ours[f"v2t_r{k}"] == pytest.approx(100.0 * v2t.item())


def test_accuracy_per_class_and_confusion_agree_with_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    generator = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(200, 7, generator=generator), torch.randint(0, 7, (200,), generator=generator)
    ours = topk_accuracy(scores, labels, ks=(1, 5))
    for k in (1, 5):
        theirs = MulticlassAccuracy(num_classes=7, top_k=k, average="micro")(scores, labels)
        assert ours[f"top{k}"] == pytest.approx(theirs.item())
    predictions = scores.argmax(dim=1)
    per_class = MulticlassAccuracy(num_classes=7, average=None)(scores, labels)
    assert per_class_accuracy(predictions, labels, 7) == pytest.approx(per_class.tolist())
    assert confusion_matrix(predictions, labels, 7) == MulticlassConfusionMatrix(num_classes=7)(scores, labels).tolist()
