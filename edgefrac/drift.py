"""Accuracy drift of a quantized model against its full-precision reference.

Both models score the same images; each decides at its own threshold. The
report gives decision agreement, the change in AUC, sensitivity and
specificity, the size of the probability changes, the images whose decision
flipped, and the same figures for each group (class, body region).

Agreement alone shows little of how close two models are, because it also
depends on how many images score near the threshold. So each summary also
gives the standard deviation of the logit difference over all images. It
gives the same over the images whose reference logit lies within 1 of the
reference threshold's, because only differences near the threshold move
decisions, and an int8 model's error can be much smaller there. The summary
also counts the reference scores within that second standard deviation of the
threshold: the decisions a difference of typical size can reach. Images where
either model's probability is exactly 0 or 1 have no finite logit and are left
out of these three figures.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgefrac import metrics
from edgefrac.errors import UsageError


@dataclasses.dataclass(frozen=True)
class DriftSummary:
    """Drift figures over one set of images."""

    images: int
    agreement: float
    reference_auc: float
    candidate_auc: float
    reference_sensitivity: float
    candidate_sensitivity: float
    reference_specificity: float
    candidate_specificity: float
    max_abs_delta_p: float
    mean_abs_delta_p: float
    flipped: int
    logit_delta_std: float
    """Standard deviation of the candidate's logit minus the reference's."""
    logit_delta_std_near_threshold: float
    """The same over the images whose reference logit is within ``NEAR_THRESHOLD_LOGIT`` of the threshold's."""
    near_threshold: int
    """Reference scores within ``logit_delta_std_near_threshold`` of the reference threshold, in logit units."""

    @property
    def delta_auc(self) -> float:
        return self.candidate_auc - self.reference_auc

    @property
    def delta_sensitivity(self) -> float:
        return self.candidate_sensitivity - self.reference_sensitivity

    @property
    def delta_specificity(self) -> float:
        return self.candidate_specificity - self.reference_specificity

    @property
    def disagreement(self) -> float:
        return 1.0 - self.agreement

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(
            delta_auc=self.delta_auc,
            delta_sensitivity=self.delta_sensitivity,
            delta_specificity=self.delta_specificity,
        )
        return {key: _json_number(value) for key, value in data.items()}


@dataclasses.dataclass(frozen=True)
class DriftReport:
    """Overall drift, drift per group, and the ids of the images whose decision flipped."""

    reference_threshold: float
    candidate_threshold: float
    overall: DriftSummary
    groups: dict[str, DriftSummary]
    flipped_ids: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "reference_threshold": self.reference_threshold,
            "candidate_threshold": self.candidate_threshold,
            "overall": self.overall.to_dict(),
            "groups": {name: summary.to_dict() for name, summary in self.groups.items()},
            "flipped_ids": list(self.flipped_ids),
        }

    def exceeds(self, max_disagreement: float) -> bool:
        """Return whether more than ``max_disagreement`` of the decisions flipped."""
        if not 0.0 <= max_disagreement <= 1.0:
            raise UsageError(f"invalid --max-drift {max_disagreement}: expected a fraction in [0, 1]")
        return self.overall.disagreement > max_disagreement + 1e-12


def _json_number(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# Probabilities are kept this far from 0 and 1 before taking logits, so a
# saturated sigmoid output still has a finite logit.
_PROBABILITY_CLIP = 1e-7

NEAR_THRESHOLD_LOGIT = 1.0
"""Half-width, in logit units, of the band around the threshold where logit differences are measured."""


def logit(probabilities) -> np.ndarray:
    """Return the log-odds of ``probabilities``, clipped to [1e-7, 1 - 1e-7] first."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_CLIP, 1.0 - _PROBABILITY_CLIP)
    return np.log(clipped) - np.log1p(-clipped)


def _std(values: np.ndarray) -> float:
    return float(values.std()) if values.size >= 2 else math.nan


def _logit_spread(reference, candidate, reference_threshold) -> tuple[float, float, int]:
    """Return the logit difference's standard deviation overall and near the threshold, and the scores it reaches.

    A probability of exactly 0 or 1 (an int8 sigmoid output rounded to 0, or a
    saturated float sigmoid) has no finite logit, so images where either model
    gives one are left out. A standard deviation needs two images;
    with fewer it is NaN and no score counts as reached.
    """
    finite = (reference > 0.0) & (reference < 1.0) & (candidate > 0.0) & (candidate < 1.0)
    delta = logit(candidate[finite]) - logit(reference[finite])
    distance = np.abs(logit(reference[finite]) - logit(reference_threshold))
    near_std = _std(delta[distance <= NEAR_THRESHOLD_LOGIT])
    reached = 0 if math.isnan(near_std) else int(np.sum(distance <= near_std))
    return _std(delta), near_std, reached


def _summary(labels, reference, candidate, reference_threshold, candidate_threshold) -> DriftSummary:
    reference_decisions = reference >= reference_threshold
    candidate_decisions = candidate >= candidate_threshold
    delta = np.abs(candidate - reference)
    logit_delta_std, logit_delta_std_near, near_threshold = _logit_spread(reference, candidate, reference_threshold)
    reference_confusion = metrics.confusion(reference, labels, reference_threshold)
    candidate_confusion = metrics.confusion(candidate, labels, candidate_threshold)
    return DriftSummary(
        images=int(labels.size),
        agreement=float(np.mean(reference_decisions == candidate_decisions)) if labels.size else math.nan,
        reference_auc=metrics.roc_auc(reference, labels),
        candidate_auc=metrics.roc_auc(candidate, labels),
        reference_sensitivity=reference_confusion.sensitivity,
        candidate_sensitivity=candidate_confusion.sensitivity,
        reference_specificity=reference_confusion.specificity,
        candidate_specificity=candidate_confusion.specificity,
        max_abs_delta_p=float(delta.max()) if delta.size else math.nan,
        mean_abs_delta_p=float(delta.mean()) if delta.size else math.nan,
        flipped=int(np.sum(reference_decisions != candidate_decisions)),
        logit_delta_std=logit_delta_std,
        logit_delta_std_near_threshold=logit_delta_std_near,
        near_threshold=near_threshold,
    )


def compare(
    ids,
    labels,
    reference_probabilities,
    reference_threshold: float,
    candidate_probabilities,
    candidate_threshold: float,
    groups: dict[str, list[str]] | None = None,
) -> DriftReport:
    """Compare two models' probabilities on the same labelled images.

    ``groups`` maps a group name (``"class:fractured"``, ``"region:hand"``) to
    the ids it contains; ids not scored by both models are ignored.
    """
    ids = [str(i) for i in ids]
    labels = np.asarray(labels, dtype=np.int64)
    reference = np.asarray(reference_probabilities, dtype=np.float64)
    candidate = np.asarray(candidate_probabilities, dtype=np.float64)
    if not (len(ids) == labels.size == reference.size == candidate.size):
        raise UsageError(
            f"drift inputs differ in length: {len(ids)} ids, {labels.size} labels, "
            f"{reference.size} reference and {candidate.size} candidate scores"
        )
    overall = _summary(labels, reference, candidate, reference_threshold, candidate_threshold)
    flipped_mask = (reference >= reference_threshold) != (candidate >= candidate_threshold)
    position = {image_id: index for index, image_id in enumerate(ids)}
    group_summaries = {}
    for name, members in (groups or {}).items():
        index = np.array([position[m] for m in members if m in position], dtype=np.int64)
        if index.size:
            group_summaries[name] = _summary(
                labels[index], reference[index], candidate[index], reference_threshold, candidate_threshold
            )
    return DriftReport(
        reference_threshold=float(reference_threshold),
        candidate_threshold=float(candidate_threshold),
        overall=overall,
        groups=group_summaries,
        flipped_ids=tuple(i for i, flipped in zip(ids, flipped_mask) if flipped),
    )
