"""Evaluate a classifier on labelled images: AUC with a bootstrap CI and rates at the threshold.

This module needs numpy alone, so the device can evaluate a model file with
``FractureClassifier`` and no TensorFlow. ``converters.evaluation`` scores a
Keras model and passes its probabilities to ``evaluate`` here, so both kinds
of model get the same report. Rendering (tables, ROC plot) lives in
``edgefrac.evaluation_report``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from edgefrac import metrics
from edgefrac.batch import regular_file_sha256
from edgefrac.classifier import FractureClassifier
from edgefrac.dataset import REGIONS, UNKNOWN_REGION
from edgefrac.errors import InputError, TruncatedImageError, UsageError

logger = logging.getLogger(__name__)

EVALUATION_FORMAT = "edgefrac-evaluation/1"
DEFAULT_RESAMPLES = 1000
CHANGED_EXAMPLES = 3
"""Paths of changed files named in the warning; the report lists all of them."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One labelled image to score, with the metadata it is grouped by."""

    image_id: str
    path: Path
    label: int
    region: str = UNKNOWN_REGION
    hardware: bool | None = None
    decodes_fully: bool = True
    """False when the split already found the file truncated, so a decode failure is expected."""
    sha256: str | None = None
    """SHA-256 of the file when the split was made; None when it was not recorded."""


@dataclasses.dataclass(frozen=True)
class ChangedFile:
    """An image whose bytes differ from the SHA-256 in the split file, scored with the split's label anyway."""

    image_id: str
    path: str


@dataclasses.dataclass(frozen=True)
class FailedCase:
    """An image left out of the evaluation because it could not be decoded."""

    image_id: str
    path: str
    error: str
    expected: bool
    """True when the split file had already marked the image as not decoding fully."""


@dataclasses.dataclass(frozen=True)
class ScoredCases:
    """Cases that were scored, their fracture probabilities, and the cases that failed."""

    cases: tuple[Case, ...]
    probabilities: np.ndarray
    failed: tuple[FailedCase, ...]


@dataclasses.dataclass(frozen=True)
class GroupMetrics:
    """AUC with its bootstrap CI and the confusion rates at the threshold, over one group of images."""

    name: str
    images: int
    fractured: int
    auc: float
    auc_ci: tuple[float, float]
    at_threshold: metrics.ConfusionMetrics

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "images": self.images,
            "fractured": self.fractured,
            "auc": self.auc,
            "auc_ci95": list(self.auc_ci),
            **self.at_threshold.to_dict(),
        }
        return _json_safe(data)


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one model on one split, overall and per group, with the per-image probabilities."""

    model: dict
    split: dict
    threshold: float
    threshold_source: str
    overall: GroupMetrics
    regions: tuple[GroupMetrics, ...]
    hardware: tuple[GroupMetrics, ...]
    cases: tuple[Case, ...]
    probabilities: np.ndarray
    failed: tuple[FailedCase, ...]
    resamples: int
    changed: tuple[ChangedFile, ...] = ()

    @property
    def labels(self) -> np.ndarray:
        return np.array([case.label for case in self.cases], dtype=np.int64)

    @property
    def groups(self) -> tuple[GroupMetrics, ...]:
        """Overall, then each body region, then with and without orthopaedic hardware."""
        return (self.overall, *self.regions, *self.hardware)

    @property
    def unexpected_failures(self) -> int:
        return sum(not failure.expected for failure in self.failed)

    def to_dict(self) -> dict:
        return {
            "format": EVALUATION_FORMAT,
            "model": self.model,
            "split": self.split,
            "threshold": {"value": self.threshold, "source": self.threshold_source},
            "bootstrap_resamples": self.resamples,
            "overall": self.overall.to_dict(),
            "regions": [group.to_dict() for group in self.regions],
            "hardware": [group.to_dict() for group in self.hardware],
            "failed": [dataclasses.asdict(failure) for failure in self.failed],
            "changed_files": [dataclasses.asdict(changed) for changed in self.changed],
            "predictions": [
                {"image_id": case.image_id, "label": case.label, "probability": float(probability)}
                for case, probability in zip(self.cases, self.probabilities)
            ],
        }


def _json_safe(data: dict) -> dict:
    """Replace NaN (an undefined rate, such as AUC over one class) with None, which JSON can store."""

    def convert(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    return {key: convert(value) for key, value in data.items()}


def find_changed_files(cases: list[Case]) -> tuple[ChangedFile, ...]:
    """Hash each case's file once and return the files whose SHA-256 differs from the split file's.

    A file that cannot be read is not listed here, because decoding it fails
    and lists it as failed.
    """
    changed = []
    for case in cases:
        if case.sha256 is None:
            continue
        digest = regular_file_sha256(case.path)
        if digest is not None and digest != case.sha256:
            changed.append(ChangedFile(image_id=case.image_id, path=str(case.path)))
    log_changed_files(changed, len(cases))
    return tuple(changed)


def log_changed_files(changed: list[ChangedFile], total: int) -> None:
    if not changed:
        return
    examples = ", ".join(item.path for item in changed[:CHANGED_EXAMPLES])
    more = f" and {len(changed) - CHANGED_EXAMPLES} more" if len(changed) > CHANGED_EXAMPLES else ""
    logger.warning(
        "%d of %d images differ from the SHA-256 in the split file (%s%s); they are scored with the split's "
        "labels, which may not fit them: check that --data is the dataset the split was made from",
        len(changed), total, examples, more,
    )


def score_cases(classifier: FractureClassifier, cases: list[Case]) -> ScoredCases:
    """Score each case with the device runtime, leaving out and listing files that fail to decode."""
    decoded: list[Case] = []
    probabilities: list[float] = []
    failed: list[FailedCase] = []
    for case in cases:
        try:
            prediction = classifier.predict_file(case.path)
        except InputError as error:
            failed.append(failure_of(case, error))
            continue
        decoded.append(case)
        probabilities.append(prediction.probability)
    log_failures(failed, len(cases))
    return ScoredCases(tuple(decoded), np.asarray(probabilities, dtype=np.float64), tuple(failed))


def failure_of(case: Case, error: InputError) -> FailedCase:
    """Record that ``case`` was left out because decoding raised ``error``."""
    text = str(error)
    if isinstance(error, TruncatedImageError):
        # The decoder's advice after "; " names infer's --allow-truncated, which evaluation does not take.
        text = text.split("; ", 1)[0]
    return FailedCase(
        image_id=case.image_id,
        path=str(case.path),
        error=f"{type(error).__name__}: {text}",
        expected=not case.decodes_fully,
    )


def log_failures(failed: list[FailedCase] | tuple[FailedCase, ...], total: int) -> None:
    if not failed:
        return
    expected = sum(failure.expected for failure in failed)
    logger.warning(
        "left out %d of %d images that could not be read or decoded (%d already marked as truncated in the split file)",
        len(failed), total, expected,
    )


def evaluate(
    scored: ScoredCases,
    threshold: float,
    *,
    threshold_source: str,
    model: dict,
    split: dict,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    changed: tuple[ChangedFile, ...] = (),
) -> EvaluationReport:
    """Compute the report of ``scored`` at ``threshold``, overall and per region and hardware group.

    ``changed`` lists the files whose bytes differ from the split file; the
    report records them and their count.
    """
    if not scored.cases:
        raise UsageError(
            f"no image of split {split.get('name')!r} could be scored ({len(scored.failed)} could not be read or decoded); "
            "check --data points at the dataset the split file was made from"
        )
    if resamples < 1:
        raise UsageError(f"invalid bootstrap resample count {resamples}: expected at least 1")
    probabilities = np.asarray(scored.probabilities, dtype=np.float64)
    labels = np.array([case.label for case in scored.cases], dtype=np.int64)
    every = np.ones(labels.size, dtype=bool)
    overall = group_metrics("all", probabilities, labels, every, threshold, resamples, seed)

    present_regions = {case.region for case in scored.cases}
    region_names = [name for name in (*REGIONS, UNKNOWN_REGION) if name in present_regions]
    region_names += sorted(present_regions - set(region_names))
    regions = tuple(
        group_metrics(
            name,
            probabilities,
            labels,
            np.array([case.region == name for case in scored.cases]),
            threshold,
            resamples,
            seed,
        )
        for name in region_names
    )

    hardware = []
    for name, value in (("with hardware", True), ("without hardware", False)):
        mask = np.array([case.hardware is value for case in scored.cases])
        if mask.any():
            hardware.append(group_metrics(name, probabilities, labels, mask, threshold, resamples, seed))

    return EvaluationReport(
        model=model,
        split={**split, "scored": len(scored.cases), "failed": len(scored.failed), "changed_files": len(changed)},
        threshold=float(threshold),
        threshold_source=threshold_source,
        overall=overall,
        regions=regions,
        hardware=tuple(hardware),
        cases=scored.cases,
        probabilities=probabilities,
        failed=scored.failed,
        resamples=resamples,
        changed=tuple(changed),
    )


def group_metrics(
    name: str,
    probabilities: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    threshold: float,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> GroupMetrics:
    """Compute AUC, its bootstrap 95% CI and the rates at ``threshold`` over the cases in ``mask``."""
    scores = probabilities[mask]
    truth = labels[mask]
    auc = metrics.roc_auc(scores, truth)
    if math.isnan(auc):
        # One class only: every resample would be undefined too.
        interval = (math.nan, math.nan)
    else:
        interval = metrics.bootstrap_auc_ci(scores, truth, resamples=resamples, seed=seed)
    return GroupMetrics(
        name=name,
        images=int(truth.size),
        fractured=int(truth.sum()),
        auc=auc,
        auc_ci=interval,
        at_threshold=metrics.confusion(scores, truth, threshold),
    )
