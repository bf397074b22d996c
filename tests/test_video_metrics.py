"""Video metrics against hand-computed values and brute-force Python loops (scikit-learn is not a dependency)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mmpretrain.video.eval import metrics
from mmpretrain.video.eval.metrics import (
    apply_thresholds,
    average_precision,
    average_precision_per_tag,
    gap_at_k,
    mean_average_precision,
    multilabel_f1,
    per_class_report,
    precision_recall_at_k,
    ranks_from_topk,
    rerank_topk,
    retrieval_metrics,
    retrieval_metrics_from_ranks,
    topk_accuracy,
    tune_thresholds,
)


def tied_scores(rng: np.random.Generator, shape: tuple[int, ...], levels: int = 5) -> np.ndarray:
    """Scores on a coarse grid, so that ties are frequent."""
    return rng.integers(0, levels, size=shape) / (levels - 1)


def multilabel_data(seed: int, n: int = 40, t: int = 6, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, t)) < 0.3).astype(np.int64)
    targets[:, -1] = 0                                                       # one tag without positives
    scores = tied_scores(rng, (n, t)) if ties else rng.random((n, t))
    return scores + 0.3 * targets * rng.random((n, t)), targets


# ---------------------------------------------------------------------------------------------------- references


def ref_ap(scores, targets) -> float:
    """AP from its definition: Σ (R_n − R_{n−1})·P_n over thresholds at the distinct scores, predicting s >= t."""
    n_pos = sum(targets)
    if n_pos == 0:
        return float("nan")
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        predicted = [i for i in range(len(scores)) if scores[i] >= threshold]
        tp = sum(targets[i] for i in predicted)
        ap += (tp / n_pos - previous_recall) * tp / len(predicted)
        previous_recall = tp / n_pos
    return ap


def ref_youtube8m_gap(scores: np.ndarray, targets: np.ndarray, k: int) -> float:
    """``eval_util.calculate_gap`` of the YouTube-8M starter code, spelled out (valid for distinct scores)."""
    k = min(k, scores.shape[1])
    predictions, actuals = [], []
    for video in range(scores.shape[0]):
        top = sorted(range(scores.shape[1]), key=lambda t: scores[video, t], reverse=True)[:k]
        predictions += [scores[video, t] for t in top]
        actuals += [targets[video, t] for t in top]
    num_positives = int(targets.sum())
    if num_positives == 0:
        return 0.0
    pairs = list(zip(predictions, actuals))
    random.Random(0).shuffle(pairs)                                          # the starter's anti-tie shuffle
    pairs.sort(key=lambda pair: pair[0], reverse=True)
    gap, hits = 0.0, 0
    for i, (_, actual) in enumerate(pairs):
        if actual > 0:
            hits += 1
            gap += hits / (i + 1) / num_positives
    return gap


def ref_f1(predicted, targets) -> float:
    tp = sum(p and y for p, y in zip(predicted, targets))
    fp = sum(p and not y for p, y in zip(predicted, targets))
    fn = sum(y and not p for p, y in zip(predicted, targets))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


# ---------------------------------------------------------------------------------------------------- classification


def test_topk_accuracy_hand_example_with_ties_and_large_k():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.3], [0.9, 0.05, 0.05]])
    labels = np.array([2, 1, 2])
    # label ranks (stable descending order): row 0 second, row 1 second (class 0 first on the tie), row 2 third
    assert topk_accuracy(scores, labels, ks=(1, 2, 5)) == pytest.approx({1: 0.0, 2: 200 / 3, 5: 100.0})


def test_topk_accuracy_matches_stable_argsort_on_ties():
    rng = np.random.default_rng(0)
    scores, labels = tied_scores(rng, (200, 7)), rng.integers(0, 7, 200)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    expected = {k: 100 * np.mean([labels[i] in ranked[i, :k] for i in range(200)]) for k in (1, 3, 9)}
    assert topk_accuracy(scores, labels, ks=(1, 3, 9)) == pytest.approx(expected)
    torch_result = topk_accuracy(torch.from_numpy(scores).to(torch.bfloat16), torch.from_numpy(labels), ks=(9,))
    assert torch_result == {9: 100.0}


def test_per_class_report_hand_example():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.4, 0.3]])
    labels = np.array([0, 0, 1, 2])                                          # predictions: 0, 1, 1, 1
    report = per_class_report(scores, labels, ["a", "b", "c"])
    expected = [("a", 2, 1.0, 0.5, 2 / 3), ("b", 1, 1 / 3, 1.0, 0.5), ("c", 1, 0.0, 0.0, 0.0)]
    for row, (name, support, precision, recall, f1) in zip(report, expected):
        assert (row["name"], row["support"]) == (name, support)
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["top1"] == pytest.approx(100 * recall)


# ---------------------------------------------------------------------------------------------------- AP and mAP


def test_average_precision_hand_examples():
    # scikit-learn's documented example: ranking 1 0 1 0 → (1/1 + 2/3) / 2
    assert average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6)
    # a tie group {0.5: one positive, one negative} is one threshold: ½·(1/3) + ½·(2/4)
    assert average_precision([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]) == pytest.approx(5 / 12)
    # everything tied: precision of the whole set
    assert average_precision([0.3, 0.3, 0.3], [1, 0, 0]) == pytest.approx(1 / 3)
    assert np.isnan(average_precision([0.3, 0.2], [0, 0]))


def test_average_precision_matches_definition_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(1, 25))
        scores, targets = tied_scores(rng, (n,)), (rng.random(n) < 0.4).astype(int)
        expected = ref_ap(scores.tolist(), targets.tolist())
        got = average_precision(scores, targets)
        assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected)
        order = rng.permutation(n)                                           # ties make it order-independent
        assert average_precision(scores[order], targets[order]) == pytest.approx(got, nan_ok=True)


def test_mean_average_precision_hand_example():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.1, 0.2, 0.3]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    # tag 0: ranking 1 0 1 → (1 + 2/3)/2; tag 1: ranking 1 1 0 → 1; tag 2: no positive, left out
    aps = average_precision_per_tag(scores, targets)
    np.testing.assert_allclose(aps[:2], [5 / 6, 1.0])
    assert np.isnan(aps[2])
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1) / 2)
    assert np.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_mean_average_precision_matches_brute_force():
    scores, targets = multilabel_data(2)
    per_tag = [ref_ap(scores[:, t].tolist(), targets[:, t].tolist()) for t in range(scores.shape[1])]
    np.testing.assert_allclose(average_precision_per_tag(scores, targets), per_tag)
    assert mean_average_precision(scores, targets) == pytest.approx(np.nanmean(per_tag))


# ---------------------------------------------------------------------------------------------------- GAP, P@k, R@k

HAND_SCORES = np.array([[0.9, 0.2, 0.6], [0.8, 0.7, 0.1], [0.95, 0.3, 0.65]])
HAND_TARGETS = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 0]])


def test_gap_hand_example():
    # top-2 pooled: .95(0) .9(1) .8(0) .7(0) .65(0) .6(1); 3 positives overall (video 1's is outside its top-2)
    assert gap_at_k(HAND_SCORES, HAND_TARGETS, k=2) == pytest.approx((1 / 2 + 2 / 6) / 3)
    assert gap_at_k(HAND_SCORES, HAND_TARGETS, k=20) == pytest.approx(ref_youtube8m_gap(HAND_SCORES, HAND_TARGETS, 3))
    assert gap_at_k(HAND_SCORES, np.zeros_like(HAND_TARGETS)) == 0.0


@pytest.mark.parametrize("k", [1, 3, 20])
def test_gap_matches_youtube8m_starter_code(k):
    scores, targets = multilabel_data(3, n=60, t=25, ties=False)
    assert gap_at_k(scores, targets, k=k) == pytest.approx(ref_youtube8m_gap(scores, targets, k))


def test_gap_with_ties_does_not_depend_on_video_order():
    scores, targets = multilabel_data(4, n=50, t=8)
    order = np.random.default_rng(0).permutation(50)
    assert gap_at_k(scores[order], targets[order], k=3) == pytest.approx(gap_at_k(scores, targets, k=3))


def test_precision_recall_at_k_hand_example():
    # video 0: top-2 = both positives (P 1, R 1); video 1: none of its one positive (P 0, R 0); video 2 left out
    assert precision_recall_at_k(HAND_SCORES, HAND_TARGETS, 2) == pytest.approx((0.5, 0.5))
    # k = 3 = T: video 0 P 2/3 R 1, video 1 P 1/3 R 1
    assert precision_recall_at_k(HAND_SCORES, HAND_TARGETS, 3) == pytest.approx((0.5, 1.0))
    assert precision_recall_at_k(HAND_SCORES, HAND_TARGETS, 10) == pytest.approx((0.5, 1.0))


@pytest.mark.parametrize("ties", [False, True])
def test_precision_recall_at_k_matches_brute_force(ties, monkeypatch):
    monkeypatch.setattr(metrics, "_SORT_BLOCK_ELEMENTS", 40)                # several row blocks of 4 videos
    scores, targets = multilabel_data(5, n=30, t=9, ties=ties)
    precisions, recalls = [], []
    for video in range(30):
        positives = set(np.flatnonzero(targets[video]))
        if positives:
            top = sorted(range(9), key=lambda t: -scores[video, t])[:4]    # a tie at 4th place keeps lower tags
            precisions.append(len(positives.intersection(top)) / 4)
            recalls.append(len(positives.intersection(top)) / len(positives))
    assert precision_recall_at_k(scores, targets, 4) == pytest.approx((np.mean(precisions), np.mean(recalls)))


# ---------------------------------------------------------------------------------------------------- thresholds


def test_tuned_thresholds_beat_a_global_threshold_when_scales_differ():
    # tag 0 separates at 0.8 and tag 1 at 0.2: no single threshold gets both right
    scores = np.array([[0.9, 0.3], [0.7, 0.1], [0.95, 0.35], [0.75, 0.05], [0.3, 0.5]])
    targets = np.array([[1, 1], [0, 0], [1, 1], [0, 0], [0, 1]])
    thresholds = tune_thresholds(scores, targets)
    assert multilabel_f1(apply_thresholds(scores, thresholds), targets)["macro"] == 1.0
    best_global = max(multilabel_f1(scores >= g, targets)["macro"] for g in np.append(np.unique(scores), np.inf))
    assert best_global < 1.0


def test_tuned_thresholds_at_least_any_global_threshold_per_tag():
    scores, targets = multilabel_data(6, n=60, t=7)
    thresholds = tune_thresholds(scores, targets)
    predictions = apply_thresholds(scores, thresholds)
    assert thresholds[-1] == np.inf and not predictions[:, -1].any()        # the tag without positives
    for t in range(6):
        tuned = ref_f1(predictions[:, t].tolist(), targets[:, t].tolist())
        for g in np.append(np.unique(scores), np.inf):
            assert tuned >= ref_f1((scores[:, t] >= g).tolist(), targets[:, t].tolist()) - 1e-12


def test_tune_thresholds_on_a_grid_picks_the_best_grid_value():
    scores, targets = multilabel_data(7, n=50, t=5)
    grid = np.linspace(0, 1.3, 27)
    thresholds = tune_thresholds(scores, targets, grid=grid)
    for t in range(4):
        f1s = [ref_f1((scores[:, t] >= g).tolist(), targets[:, t].tolist()) for g in grid]
        best = max(f1s)
        assert thresholds[t] == max(g for g, f1 in zip(grid, f1s) if f1 == best)   # highest among equals


def test_multilabel_f1_hand_example_and_brute_force():
    predictions = np.array([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=bool)
    targets = np.array([[1, 0], [0, 1], [0, 1], [0, 1]])
    # tag 0: tp 1 fp 1 fn 0 → 2/3; tag 1: tp 1 fn 2 → 1/2; micro: tp 2 fp 1 fn 2 → 4/7
    assert multilabel_f1(predictions, targets) == pytest.approx({"micro": 4 / 7, "macro": 7 / 12})
    scores, targets = multilabel_data(8)
    predictions = scores > 0.5
    per_tag = [ref_f1(predictions[:, t].tolist(), targets[:, t].tolist()) for t in range(5)]  # tags with positives
    micro = ref_f1(predictions.ravel().tolist(), targets.ravel().tolist())
    assert multilabel_f1(predictions, targets) == pytest.approx({"micro": micro, "macro": np.mean(per_tag)})


# ---------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_metrics_hand_example_with_ties():
    sim = np.array([[0.9, 0.1, 0.3, 0.2],     # correct item 0 is best: rank 1
                    [0.5, 0.7, 0.7, 0.1],     # correct item 2 ties with item 1: pessimistic rank 2
                    [0.4, 0.4, 0.4, 0.4]])    # all tied: rank 4
    metrics = retrieval_metrics(sim, np.array([0, 2, 3]), ks=(1, 2, 5))
    assert metrics == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@5": 100.0, "MdR": 2.0, "MnR": 7 / 3})
    assert retrieval_metrics_from_ranks(np.array([1, 2, 4, 9]), ks=(1,)) == pytest.approx(
        {"R@1": 25.0, "MdR": 3.0, "MnR": 4.0})


def test_retrieval_metrics_match_brute_force_ranks():
    rng = np.random.default_rng(9)
    sim, gt = tied_scores(rng, (30, 12)), rng.integers(0, 12, 30)
    ranks = [1 + sum(sim[q, j] >= sim[q, gt[q]] for j in range(12) if j != gt[q]) for q in range(30)]
    expected = {f"R@{k}": 100 * np.mean(np.array(ranks) <= k) for k in (1, 5, 10)}
    expected |= {"MdR": np.median(ranks), "MnR": np.mean(ranks)}
    assert retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(gt)) == pytest.approx(expected)


def test_ranks_from_topk_shortlist():
    topk_ids = np.array([[3, 0, 1], [2, 5, 7], [4, -1, -1], [6, 1, 8]])
    gt = np.array([0, 7, 9, 6])
    np.testing.assert_array_equal(ranks_from_topk(topk_ids, gt), [2, 3, 4, 1])
    np.testing.assert_array_equal(ranks_from_topk(topk_ids, gt, k_max=2), [2, 3, 3, 1])   # misses: k_max + 1
    rng = np.random.default_rng(10)
    sim, gt = rng.random((20, 50)), rng.integers(0, 50, 20)
    full = np.argsort(-sim, axis=1)
    shortlist = ranks_from_topk(full[:, :10], gt)
    exact = (sim >= sim[np.arange(20), gt][:, None]).sum(1)
    np.testing.assert_array_equal(shortlist, np.minimum(exact, 11))
    for k in (1, 5, 10):
        assert retrieval_metrics_from_ranks(shortlist, (k,))[f"R@{k}"] == retrieval_metrics(sim, gt, (k,))[f"R@{k}"]


def test_rerank_keeps_membership_and_is_stable_on_ties():
    rng = np.random.default_rng(11)
    topk_ids = np.stack([rng.permutation(100)[:8] for _ in range(5)])
    topk_scores = np.sort(rng.random((5, 8)), axis=1)[:, ::-1]               # descending per row, like FAISS
    rerank = rng.integers(0, 3, (5, 8)).astype(float)                       # many ties
    ids, scores = rerank_topk(topk_ids, topk_scores, rerank)
    for q in range(5):
        assert sorted(ids[q]) == sorted(topk_ids[q])
        position = {i: p for p, i in enumerate(topk_ids[q])}
        expected = sorted(topk_ids[q], key=lambda i: (-rerank[q, position[i]], position[i]))
        np.testing.assert_array_equal(ids[q], expected)
        np.testing.assert_array_equal(scores[q], [rerank[q, position[i]] for i in ids[q]])
    # equal re-rank scores everywhere: the first-stage order is kept as it is
    ids, _ = rerank_topk(topk_ids, topk_scores, np.zeros((5, 8)))
    np.testing.assert_array_equal(ids, topk_ids)


def test_rerank_breaks_ties_by_first_stage_score_then_position():
    ids, scores = rerank_topk(np.array([[10, 11, 12, 13]]), np.array([[0.5, 0.9, 0.9, 0.1]]),
                              np.array([[1.0, 1.0, 1.0, 2.0]]))
    np.testing.assert_array_equal(ids, [[13, 11, 12, 10]])
    np.testing.assert_array_equal(scores, [[2.0, 1.0, 1.0, 1.0]])


# ---------------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: topk_accuracy(np.zeros(3), np.zeros(3, int)), "scores must be 2-D"),
        (lambda: topk_accuracy(np.zeros((3, 2)), np.zeros(4, int)), r"labels must have shape \(3,\)"),
        (lambda: topk_accuracy(np.zeros((3, 2)), np.array([0, 1, 2])), r"labels must lie in \[0, 2\)"),
        (lambda: topk_accuracy(np.zeros((3, 2)), np.zeros(3, int), ks=(0,)), "each of ks"),
        (lambda: topk_accuracy(np.full((1, 2), np.nan), np.zeros(1, int)), "scores contains NaN"),
        (lambda: per_class_report(np.zeros((3, 2)), np.zeros(3, int), ["a"]), "class_names has 1"),
        (lambda: average_precision([0.1, 0.2], [1, 0, 1]), r"targets must have shape \(2,\)"),
        (lambda: average_precision([0.1, 0.2], [1, 2]), "targets must contain only 0 and 1"),
        (lambda: mean_average_precision(np.zeros(4), np.zeros(4)), "scores must be 2-D"),
        (lambda: gap_at_k(np.zeros((2, 3)), np.zeros((2, 3)), k=0), "k must be a positive integer"),
        (lambda: gap_at_k(np.zeros((2, 3)), np.zeros((3, 2))), "targets must have shape"),
        (lambda: precision_recall_at_k(np.zeros((0, 3)), np.zeros((0, 3)), 1), "scores is empty"),
        (lambda: tune_thresholds(np.zeros((2, 3)), np.zeros((2, 3)), metric="map"), "metric must be 'f1'"),
        (lambda: apply_thresholds(np.zeros((2, 3)), np.zeros(2)), r"thresholds must have shape \(3,\)"),
        (lambda: multilabel_f1(np.zeros(3, bool), np.zeros(3)), "predictions must be 2-D"),
        (lambda: retrieval_metrics(np.zeros((2, 3)), np.array([0, 3])), "gt must lie in"),
        (lambda: retrieval_metrics(np.zeros((2, 3)), np.array([0.0, 1.0])), "gt must be integers"),
        (lambda: retrieval_metrics_from_ranks(np.array([0, 1])), "ranks are 1-based"),
        (lambda: ranks_from_topk(np.zeros((2, 3), int), np.zeros(2, int), k_max=4), "k_max"),
        (lambda: ranks_from_topk(np.zeros((2, 3), int), np.zeros(3, int)), r"gt must be integer ids of shape \(2,\)"),
        (lambda: rerank_topk(np.zeros((2, 3), int), np.zeros((2, 3)), np.zeros((2, 4))), "rerank_scores must have"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_tag_agreement_counts_top1_hits_sharing_each_tag() -> None:
    queries = [["red", "circle", "moving-up"], ["red", "square", "moving-left"], ["blue", "circle", "moving-up"]]
    hits = [["red", "square", "moving-up"], ["red", "square", "moving-right"], ["red", "circle", "moving-down"]]
    out = metrics.tag_agreement(queries, hits)
    assert out["red"] == {"agreement": 1.0, "queries": 2}
    assert out["circle"] == {"agreement": 0.5, "queries": 2}
    assert out["moving-up"] == {"agreement": 0.5, "queries": 2}
    assert out["blue"] == {"agreement": 0.0, "queries": 1} and out["moving-left"]["agreement"] == 0.0
    assert list(out) == sorted(out) and "moving-right" not in out  # only the queries' own tags are scored
    with pytest.raises(ValueError, match="3 queries but 2 hits"):
        metrics.tag_agreement(queries, hits[:2])
