"""Score the same labelled images with a full-precision reference and report the drift.

The reference decides at its own threshold: ``--reference-threshold`` when
given, else the threshold on the reference's model card, else (a plain float
``.tflite`` has no card) the candidate's card threshold. The last fallback
assumes that both files are conversions of one trained model, whose threshold
was chosen once on the validation split, and it logs a warning when used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from edgefrac import drift
from edgefrac.bench.latency import ScoredImage
from edgefrac.classifier import FractureClassifier, Overrides
from edgefrac.dataset import UNKNOWN_REGION, LabelledImage
from edgefrac.errors import InputError

logger = logging.getLogger(__name__)


class ReferenceScorer(Protocol):
    """A full-precision model that returns a fracture probability for an image file."""

    path: Path
    kind: str
    threshold: float
    threshold_source: str

    def probability(self, path: Path) -> float:
        """Return the fracture probability of one file; raise InputError when it cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class ReferenceInfo:
    """The reference model the drift was measured against, and the source of its threshold."""

    path: str
    kind: str
    threshold: float
    threshold_source: str
    images: int


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """The drift report and the per-image probabilities of both models, in the same order."""

    reference: ReferenceInfo
    report: drift.DriftReport
    image_ids: tuple[str, ...]
    reference_probabilities: tuple[float, ...]
    candidate_probabilities: tuple[float, ...]


class TFLiteReference:
    """A float ``.tflite`` or ``.efm`` reference run by the same interpreter as the candidate."""

    def __init__(
        self,
        path: str | os.PathLike,
        candidate: FractureClassifier,
        *,
        threshold: float | None = None,
        threads: int | None = None,
        allow_truncated: bool = False,
    ):
        from edgefrac.modelfile import load_model

        self.path = Path(path)
        model = load_model(self.path)
        overrides = Overrides(threshold=threshold)
        if model.card is None:
            # The candidate's card is the preprocessing contract (views included) of the model both files came from.
            # NOTE: a card-less reference is read as giving a probability; a logit output is not detected.
            config = candidate.preprocessing
            overrides = Overrides(
                height=config.height,
                width=config.width,
                resize=config.resize,
                scaling=config.scaling,
                threshold=threshold if threshold is not None else candidate.threshold,
                test_time_augmentation=candidate.card.test_time_augmentation,
            )
        self.classifier = FractureClassifier(
            model, threads=threads, overrides=overrides, allow_truncated=allow_truncated
        )
        views = self.classifier.card.test_time_augmentation
        if views is not candidate.card.test_time_augmentation:
            logger.warning(
                "%s is scored with test-time augmentation %s, as its card names, but the candidate with %s; "
                "drift will include that difference",
                self.path, views.value, candidate.card.test_time_augmentation.value,
            )
        self.kind = f"tflite ({self.classifier.input_tensor.dtype} input)"
        self.threshold = self.classifier.threshold
        if threshold is not None:
            self.threshold_source = "--reference-threshold"
        elif model.card is not None:
            self.threshold_source = "reference model card"
        else:
            self.threshold_source = "candidate model card (the reference has no card)"
            logger.warning(
                "%s has no model card: deciding at the candidate's threshold %.4f; "
                "pass --reference-threshold to use another",
                self.path, self.threshold,
            )

    def probability(self, path: Path) -> float:
        return self.classifier.predict_file(path).probability


def measure_drift(
    images: Sequence[LabelledImage],
    candidate_scores: Sequence[ScoredImage],
    candidate_threshold: float,
    reference: ReferenceScorer,
) -> DriftResult:
    """Score the images the candidate scored with ``reference`` and compare the two.

    Images that either model failed to decode are left out of the comparison.
    Groups are ``class:<folder name>`` and, when ``dataset.csv`` gave regions,
    ``region:<body region>``.
    """
    candidate_by_id = {s.image_id: s.probability for s in candidate_scores if s.probability is not None}
    ids, labels, reference_probabilities, candidate_probabilities = [], [], [], []
    groups: dict[str, list[str]] = {}
    for image in images:
        if image.image_id not in candidate_by_id:
            continue
        try:
            reference_probability = reference.probability(image.path)
        except InputError as error:
            logger.debug("reference left out %s: %s", image.path, error)
            continue
        ids.append(image.image_id)
        labels.append(image.label)
        reference_probabilities.append(reference_probability)
        candidate_probabilities.append(candidate_by_id[image.image_id])
        groups.setdefault(f"class:{image.class_name}", []).append(image.image_id)
        if image.region != UNKNOWN_REGION:
            groups.setdefault(f"region:{image.region}", []).append(image.image_id)

    report = drift.compare(
        ids,
        labels,
        reference_probabilities,
        reference.threshold,
        candidate_probabilities,
        candidate_threshold,
        groups=groups,
    )
    info = ReferenceInfo(
        path=str(reference.path),
        kind=reference.kind,
        threshold=reference.threshold,
        threshold_source=reference.threshold_source,
        images=len(ids),
    )
    return DriftResult(
        reference=info,
        report=report,
        image_ids=tuple(ids),
        reference_probabilities=tuple(reference_probabilities),
        candidate_probabilities=tuple(candidate_probabilities),
    )
