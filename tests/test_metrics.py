"""Metrics against values computed by hand or by brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from edgefrac import metrics
from edgefrac.errors import UsageError


def pairwise_auc(scores, labels) -> float:
    """AUC as the share of (positive, negative) pairs ranked correctly, ties counting one half."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = 0.0
    for p, n in itertools.product(positives, negatives):
        if p > n:
            wins += 1.0
        elif p == n:
            wins += 0.5
    return wins / (len(positives) * len(negatives))


def test_auc_hand_worked():
    # Positives 0.9, 0.6, 0.4 against negatives 0.7, 0.3, 0.2: of 9 pairs only
    # (0.6, 0.7) and (0.4, 0.7) are ranked wrongly, so AUC = 7/9.
    scores = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2]
    labels = [1, 1, 1, 0, 0, 0]
    assert metrics.roc_auc(scores, labels) == pytest.approx(7 / 9)


def test_auc_ties_count_half():
    # One tied pair (0.5, 0.5) and one correct pair (0.8 > 0.5): (1 + 0.5) / 2.
    assert metrics.roc_auc([0.8, 0.5, 0.5], [1, 1, 0]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    # Rounding to two decimals makes many ties.
    scores = np.round(rng.random(60) * 0.5 + labels * 0.3, 2)
    assert metrics.roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))


def test_auc_one_class_is_nan():
    assert math.isnan(metrics.roc_auc([0.2, 0.4], [1, 1]))


def test_auc_rejects_bad_labels():
    with pytest.raises(UsageError, match="labels must be 0 or 1"):
        metrics.roc_auc([0.1, 0.2], [0, 2])


def test_confusion_hand_worked():
    # At 0.5: TP = 0.9, 0.6; FN = 0.4; FP = 0.7; TN = 0.3, 0.2.
    result = metrics.confusion([0.9, 0.6, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0], 0.5)
    assert (result.true_positives, result.false_negatives) == (2, 1)
    assert (result.false_positives, result.true_negatives) == (1, 2)
    assert result.sensitivity == pytest.approx(2 / 3)
    assert result.specificity == pytest.approx(2 / 3)
    assert result.ppv == pytest.approx(2 / 3)
    assert result.npv == pytest.approx(2 / 3)
    assert result.f1 == pytest.approx(2 / 3)
    assert result.accuracy == pytest.approx(4 / 6)


def test_confusion_threshold_inclusive():
    assert metrics.confusion([0.5], [1], 0.5).true_positives == 1


def test_confusion_empty_rate_is_nan():
    result = metrics.confusion([0.9, 0.8], [1, 1], 0.5)
    assert math.isnan(result.specificity)


def test_roc_curve_ends_at_corners():
    fpr, tpr, thresholds = metrics.roc_curve([0.9, 0.6, 0.4, 0.7, 0.3, 0.2], [1, 1, 1, 0, 0, 0])
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(thresholds) < 0)


def test_roc_curve_area_is_auc():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 80)
    scores = rng.random(80) + labels * 0.4
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    assert area == pytest.approx(metrics.roc_auc(scores, labels))


def test_bootstrap_ci_contains_auc():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    scores = rng.random(200) + labels * 0.5
    low, high = metrics.bootstrap_auc_ci(scores, labels, resamples=300, seed=1)
    auc = metrics.roc_auc(scores, labels)
    assert low <= auc <= high
    assert high - low < 0.2


def test_bootstrap_ci_same_seed_same_interval():
    scores, labels = [0.9, 0.6, 0.4, 0.7, 0.3, 0.2, 0.8, 0.1], [1, 1, 1, 0, 0, 0, 1, 0]
    first = metrics.bootstrap_auc_ci(scores, labels, resamples=50, seed=9)
    second = metrics.bootstrap_auc_ci(scores, labels, resamples=50, seed=9)
    assert first == second


def test_bootstrap_ci_one_class_is_nan():
    low, high = metrics.bootstrap_auc_ci([0.1, 0.2, 0.3], [0, 0, 0], resamples=20)
    assert math.isnan(low)
    assert math.isnan(high)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # Positives sorted: 0.9, 0.8, 0.6, 0.4, 0.3.
        (0.2, 0.9),  # one of five
        (0.5, 0.6),  # ceil(2.5) = 3 of five
        (0.6, 0.6),  # exactly three of five
        (0.61, 0.4),  # just above 3/5 needs four
        (1.0, 0.3),  # every positive
        (0.01, 0.9),  # the smallest target still calls one positive
    ],
)
def test_threshold_for_sensitivity_levels(target, expected):
    scores = [0.9, 0.8, 0.6, 0.4, 0.3, 0.7, 0.5, 0.2]
    labels = [1, 1, 1, 1, 1, 0, 0, 0]
    assert metrics.threshold_for_sensitivity(scores, labels, target) == expected


def test_threshold_for_sensitivity_reaches_target():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + labels * 0.3, 2)
    for target in (0.5, 0.85, 0.9, 0.95, 0.99):
        threshold = metrics.threshold_for_sensitivity(scores, labels, target)
        achieved = metrics.confusion(scores, labels, threshold).sensitivity
        assert achieved >= target
        # The next higher score would fall short, so the threshold is the highest that works.
        higher = scores[scores > threshold]
        if higher.size:
            assert metrics.confusion(scores, labels, higher.min()).sensitivity < target


def test_threshold_for_sensitivity_tied_levels():
    # Three positives share the level 0.5 (as int8 outputs do): any target up
    # to 4/4 is met at 0.5 because the tied cases are all called positive.
    scores = [0.75, 0.5, 0.5, 0.5, 0.5, 0.25]
    labels = [1, 1, 1, 1, 0, 0]
    assert metrics.threshold_for_sensitivity(scores, labels, 0.5) == 0.5
    assert metrics.threshold_for_sensitivity(scores, labels, 1.0) == 0.5


@pytest.mark.parametrize("target", [0.0, -0.1, 1.01])
def test_threshold_for_sensitivity_invalid_target(target):
    with pytest.raises(UsageError, match="invalid target sensitivity"):
        metrics.threshold_for_sensitivity([0.1, 0.9], [0, 1], target)


def test_threshold_for_sensitivity_no_positives():
    with pytest.raises(UsageError, match="no fractured image"):
        metrics.threshold_for_sensitivity([0.1, 0.9], [0, 0], 0.9)


def test_decision_agreement_counts_same_decisions():
    # Decisions: reference 1,1,0,0 at 0.5; candidate 1,0,0,1 at 0.6.
    agreement = metrics.decision_agreement([0.9, 0.6, 0.2, 0.4], 0.5, [0.9, 0.55, 0.1, 0.7], 0.6)
    assert agreement == pytest.approx(0.5)
