"""Binary classification metrics in numpy alone, for the device and the dev machine.

Scores are fracture probabilities (or any monotone score such as a logit);
labels are 1 for fractured and 0 for not fractured. A case is called positive
when ``score >= threshold``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgefrac.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ConfusionMetrics:
    """Counts and rates of one set of decisions against the labels."""

    threshold: float
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    @property
    def count(self) -> int:
        return self.true_positives + self.false_positives + self.true_negatives + self.false_negatives

    @property
    def sensitivity(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.false_negatives)

    @property
    def specificity(self) -> float:
        return _ratio(self.true_negatives, self.true_negatives + self.false_positives)

    @property
    def ppv(self) -> float:
        return _ratio(self.true_positives, self.true_positives + self.false_positives)

    @property
    def npv(self) -> float:
        return _ratio(self.true_negatives, self.true_negatives + self.false_negatives)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.true_positives, 2 * self.true_positives + self.false_positives + self.false_negatives)

    @property
    def accuracy(self) -> float:
        return _ratio(self.true_positives + self.true_negatives, self.count)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "count": self.count,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "true_negatives": self.true_negatives,
            "false_negatives": self.false_negatives,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "ppv": self.ppv,
            "npv": self.npv,
            "f1": self.f1,
            "accuracy": self.accuracy,
        }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise UsageError(f"scores ({scores.size}) and labels ({labels.size}) differ in length")
    if not np.isin(labels, (0, 1)).all():
        raise UsageError(f"labels must be 0 or 1, got values {sorted(set(labels.tolist()))[:5]}")
    return scores, labels.astype(np.int64)


def confusion(scores, labels, threshold: float) -> ConfusionMetrics:
    """Count decisions ``score >= threshold`` against ``labels``."""
    scores, labels = _check(scores, labels)
    predicted = scores >= threshold
    positive = labels == 1
    return ConfusionMetrics(
        threshold=float(threshold),
        true_positives=int(np.sum(predicted & positive)),
        false_positives=int(np.sum(predicted & ~positive)),
        true_negatives=int(np.sum(~predicted & ~positive)),
        false_negatives=int(np.sum(~predicted & positive)),
    )


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted as one half."""
    scores, labels = _check(scores, labels)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    # Each run of tied scores gets the average of the 1-based ranks it spans.
    _, run_of_case, run_lengths = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(run_lengths)
    starts = ends - run_lengths
    ranks = ((starts + ends + 1) / 2.0)[run_of_case]
    rank_sum = ranks[labels == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return false-positive rates, true-positive rates and the thresholds that give them."""
    scores, labels = _check(scores, labels)
    thresholds = np.concatenate(([np.inf], np.unique(scores)[::-1]))
    positives = max(int(labels.sum()), 1)
    negatives = max(labels.size - int(labels.sum()), 1)
    tpr = np.array([np.sum((scores >= t) & (labels == 1)) / positives for t in thresholds])
    fpr = np.array([np.sum((scores >= t) & (labels == 0)) / negatives for t in thresholds])
    return fpr, tpr, thresholds


def bootstrap_auc_ci(
    scores, labels, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC-AUC, resampling cases with replacement."""
    scores, labels = _check(scores, labels)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = rng.integers(0, scores.size, scores.size)
        value = roc_auc(scores[index], labels[index])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return (math.nan, math.nan)
    tail = (1.0 - confidence) / 2.0
    return (float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail)))


def threshold_for_sensitivity(scores, labels, target_sensitivity: float) -> float:
    """Return the highest threshold whose sensitivity on these cases is at least the target.

    Candidates are the scores themselves, so for an int8 output with 256 levels
    the threshold is one of those levels, never a value between two levels.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise UsageError(f"invalid target sensitivity {target_sensitivity}: expected a value in (0, 1]")
    scores, labels = _check(scores, labels)
    positive_scores = np.sort(scores[labels == 1])[::-1]
    if positive_scores.size == 0:
        raise UsageError("cannot choose a threshold: the cases contain no fractured image")
    # Calling the k highest-scoring positives positive gives sensitivity k / n.
    needed = math.ceil(target_sensitivity * positive_scores.size - 1e-9)
    return float(positive_scores[max(needed, 1) - 1])


def decision_agreement(reference_scores, reference_threshold, scores, threshold) -> float:
    """Fraction of cases whose decision is the same under both models and thresholds."""
    reference = np.asarray(reference_scores, dtype=np.float64) >= reference_threshold
    candidate = np.asarray(scores, dtype=np.float64) >= threshold
    if reference.shape != candidate.shape:
        raise UsageError(f"score arrays differ in length: {reference.size} and {candidate.size}")
    return float(np.mean(reference == candidate)) if reference.size else math.nan
