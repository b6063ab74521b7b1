"""Drift figures between a reference and a candidate model: agreement, logit spread, images near the threshold."""

import json
import math

import numpy as np
import pytest

from edgefrac import drift
from edgefrac.classifier import sigmoid
from edgefrac.errors import UsageError


def _compare(reference_logits, candidate_logits, labels, threshold_logit=0.0, candidate_threshold_logit=None):
    ids = [f"img{i}" for i in range(len(labels))]
    candidate_threshold_logit = threshold_logit if candidate_threshold_logit is None else candidate_threshold_logit
    return drift.compare(
        ids, labels, sigmoid(reference_logits), float(sigmoid(threshold_logit)),
        sigmoid(candidate_logits), float(sigmoid(candidate_threshold_logit)),
    )


def test_logit_delta_std_overall():
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 2.0, 400)
    noise = rng.normal(0.05, 0.2, 400)
    labels = (reference > 0).astype(int)
    summary = _compare(reference, reference + noise, labels).overall
    assert summary.logit_delta_std == pytest.approx(noise.std(), abs=1e-6)


def test_near_threshold_counts_scores_within_band_spread():
    # Inside the band (|logit| <= 1) the noise is +-0.3 with zero mean, so its standard deviation is 0.3.
    reference = np.array([-2.0, -0.31, -0.29, -0.1, 0.1, 0.2, 0.29, 0.31, 0.9, 5.0])
    noise = np.array([0.0, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.3, -0.3, 0.0])
    labels = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    summary = _compare(reference, reference + noise, labels).overall
    assert summary.logit_delta_std_near_threshold == pytest.approx(0.3)
    # -0.29, -0.1, 0.1, 0.2 and 0.29 lie within 0.3 of the threshold logit 0.
    assert summary.near_threshold == 5


def test_band_spread_ignores_errors_far_from_threshold():
    # Large errors on confident images and small ones near the threshold. Only the small ones can flip decisions.
    reference = np.array([-6.0, -5.0, -0.5, -0.2, 0.2, 0.5, 5.0, 6.0])
    noise = np.array([2.0, -2.0, 0.05, -0.05, 0.05, -0.05, 2.0, -2.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    summary = _compare(reference, reference + noise, labels).overall
    assert summary.logit_delta_std == pytest.approx(noise.std())
    assert summary.logit_delta_std_near_threshold == pytest.approx(0.05)
    assert summary.near_threshold == 0


def test_band_follows_the_reference_threshold():
    reference = np.array([-1.0, -0.9, 1.02, 1.1, 1.18, 1.9])
    noise = np.array([0.1, -0.1, 0.1, -0.1, 0.1, -0.1])
    labels = np.array([0, 0, 1, 1, 1, 1])
    near_positives = _compare(reference, reference + noise, labels, threshold_logit=1.1).overall
    assert near_positives.logit_delta_std_near_threshold == pytest.approx(0.1)
    assert near_positives.near_threshold == 3
    near_negatives = _compare(reference, reference + noise, labels, threshold_logit=-0.95).overall
    assert near_negatives.near_threshold == 2


def test_empty_band_gives_nan_spread():
    reference = np.array([-5.0, -4.0, 4.0, 5.0])
    summary = _compare(reference, reference + 0.1, np.array([0, 0, 1, 1])).overall
    assert math.isnan(summary.logit_delta_std_near_threshold)
    assert summary.near_threshold == 0
    assert summary.to_dict()["logit_delta_std_near_threshold"] is None


def test_identical_models_have_no_logit_spread():
    reference = np.array([-3.0, -1.0, 0.0, 1.0, 2.5])
    labels = np.array([0, 0, 1, 1, 1])
    summary = _compare(reference, reference, labels).overall
    assert summary.logit_delta_std == 0.0
    assert summary.logit_delta_std_near_threshold == 0.0
    assert summary.agreement == 1.0
    assert summary.flipped == 0
    # Only the score exactly on the threshold is within a spread of zero.
    assert summary.near_threshold == 1


def test_saturated_probabilities_left_out():
    # An int8 sigmoid output can round to exactly 0 or 1, which has no finite logit.
    reference = np.array([0.001, 0.2, 0.3, 0.6, 0.999])
    candidate = np.array([0.0, sigmoid(-1.2), sigmoid(-0.9), 0.6, 1.0])
    report = drift.compare(["a", "b", "c", "d", "e"], [0, 0, 1, 1, 1], reference, 0.5, candidate, 0.5)
    expected = np.std([-1.2 - drift.logit(0.2), -0.9 - drift.logit(0.3), 0.0])
    assert report.overall.logit_delta_std == pytest.approx(expected)
    assert np.isfinite(drift.logit(np.array([0.0, 1.0]))).all()


def test_single_image_has_no_spread():
    report = drift.compare(["a"], [1], [0.6], 0.5, [0.4], 0.5)
    assert report.overall.flipped == 1
    assert math.isnan(report.overall.logit_delta_std)
    assert math.isnan(report.overall.logit_delta_std_near_threshold)
    assert report.overall.near_threshold == 0


def test_groups_get_their_own_logit_spread():
    reference = np.array([-2.0, -1.0, 1.0, 2.0])
    candidate = reference + np.array([0.0, 0.0, 0.5, -0.5])
    ids = ["a", "b", "c", "d"]
    report = drift.compare(
        ids, [0, 0, 1, 1], sigmoid(reference), 0.5, sigmoid(candidate), 0.5,
        groups={"class:not_fractured": ["a", "b"], "class:fractured": ["c", "d"]},
    )
    assert report.groups["class:not_fractured"].logit_delta_std == pytest.approx(0.0, abs=1e-9)
    assert report.groups["class:fractured"].logit_delta_std == pytest.approx(0.5)


def test_report_dict_carries_the_new_figures_as_json():
    reference = np.array([-1.0, 0.2, 1.5])
    report = _compare(reference, reference + np.array([0.1, -0.4, 0.2]), np.array([0, 1, 1]))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["overall"]["logit_delta_std"] == pytest.approx(report.overall.logit_delta_std)
    assert data["overall"]["logit_delta_std_near_threshold"] == pytest.approx(
        report.overall.logit_delta_std_near_threshold
    )
    assert data["overall"]["near_threshold"] == report.overall.near_threshold
    # The candidate decides 0.2 - 0.4 = -0.2 as negative, the reference 0.2 as positive.
    assert data["overall"]["flipped"] == 1
    assert data["flipped_ids"] == ["img1"]


def test_mismatched_lengths_name_the_counts():
    with pytest.raises(UsageError, match="2 ids, 3 labels"):
        drift.compare(["a", "b"], [0, 1, 1], [0.1, 0.2, 0.3], 0.5, [0.1, 0.2, 0.3], 0.5)
