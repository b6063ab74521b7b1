"""A Keras model as the full-precision reference of ``edgefrac bench --reference``.

It decodes and preprocesses each file with the device code and the candidate's
card, so the two models see the same input values, and returns the Keras
model's probability output, combined over the views of the test-time
augmentation its training record names (the candidate's without a record).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from converters.scoring import record_augmentation
from converters.tf import keras, tf
from converters.training import read_model_record
from edgefrac.classifier import FractureClassifier
from edgefrac.images import load_input
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import combine_probabilities, views

logger = logging.getLogger(__name__)


class KerasReference:
    """Score files with a ``.keras`` classifier whose output is the fracture probability.

    The threshold is ``threshold`` when given, else the one in the training
    record beside the model (``NAME.json``), else the candidate's.
    """

    kind = "keras"

    def __init__(
        self,
        path: str | os.PathLike,
        candidate: FractureClassifier,
        *,
        threshold: float | None = None,
        allow_truncated: bool = False,
    ):
        self.path = Path(path)
        self.model = keras.models.load_model(self.path, compile=False)
        self.preprocessing = candidate.preprocessing
        self.allow_truncated = allow_truncated
        record = read_model_record(self.path)
        self._check_record(record)
        self.test_time_augmentation = candidate.card.test_time_augmentation
        if record:
            self.test_time_augmentation = record_augmentation(record, f"training record of {self.path}")
            if self.test_time_augmentation is not candidate.card.test_time_augmentation:
                logger.warning(
                    "%s is scored with test-time augmentation %s, as its training record names, but the candidate "
                    "with %s; drift will include that difference",
                    self.path, self.test_time_augmentation.value, candidate.card.test_time_augmentation.value,
                )
        self._predict = tf.function(lambda batch: self.model(batch, training=False))
        if threshold is not None:
            self.threshold, self.threshold_source = float(threshold), "--reference-threshold"
        elif record and "threshold" in record:
            self.threshold = float(record["threshold"]["value"])
            self.threshold_source = f"training record {self.path.with_suffix('.json').name}"
        else:
            self.threshold, self.threshold_source = candidate.threshold, "candidate model card (no training record)"
            logger.warning(
                "%s has no training record: deciding at the candidate's threshold %.4f", self.path, self.threshold
            )

    def _check_record(self, record: dict | None) -> None:
        if not record or "preprocessing" not in record:
            return
        trained = PreprocessConfig.from_dict(record["preprocessing"])
        if trained != self.preprocessing:
            logger.warning(
                "%s was trained with preprocessing %s but the candidate's card specifies %s; "
                "drift will include that difference",
                self.path, trained.to_dict(), self.preprocessing.to_dict(),
            )

    def probability(self, path: Path) -> float:
        model_input = load_input(path, self.preprocessing, allow_truncated=self.allow_truncated)
        per_view = [
            np.asarray(self._predict(tf.constant(view[np.newaxis, ...])), dtype=np.float64).reshape(-1)
            for view in views(model_input, self.test_time_augmentation)
        ]
        return float(combine_probabilities(per_view)[0])
