"""Score a Keras model on labelled images, for ``edgefrac.evaluation.evaluate``.

The model's preprocessing, test-time augmentation and decision threshold come
from the training record beside it (``NAME.json``, written by ``converters.training.train``).
Images are decoded by the device runtime's decoder, exactly as a model file
would see them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from converters.convert import check_input_size
from converters.scoring import record_augmentation
from converters.tf import keras
from converters.training import model_record_path, predict_probabilities, read_model_record
from edgefrac.errors import InputError, ModelFileError, UsageError
from edgefrac.evaluation import Case, FailedCase, ScoredCases, failure_of, log_failures
from edgefrac.images import load_pixels
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import TestTimeAugmentation

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KerasModel:
    """A loaded Keras classifier with the preprocessing and threshold of its training record."""

    path: Path
    model: object
    preprocessing: PreprocessConfig
    threshold: float
    architecture: str
    test_time_augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE


def load_keras_model(path: str | Path) -> KerasModel:
    """Load ``path`` and its training record.

    Raises:
        UsageError: there is no training record beside the model, or its input
            size differs from the model's.
        ModelFileError: Keras cannot load the file.
    """
    path = Path(path)
    record = read_model_record(path)
    if record is None:
        raise UsageError(
            f"no training record {model_record_path(path)} beside {path}; it gives the model's preprocessing "
            "and threshold, so keep the .json that `edgefrac train` wrote next to the .keras file"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"Keras cannot load {path} ({type(error).__name__}: {error})") from None
    preprocessing = PreprocessConfig.from_dict(record["preprocessing"])
    check_input_size(model, preprocessing, path, f"training record {model_record_path(path)}")
    return KerasModel(
        path=path,
        model=model,
        preprocessing=preprocessing,
        threshold=float(record["threshold"]["value"]),
        architecture=str(record.get("architecture", "unknown")),
        test_time_augmentation=record_augmentation(record, f"training record {model_record_path(path)}"),
    )


def score_keras_cases(loaded: KerasModel, cases: list[Case]) -> ScoredCases:
    """Decode ``cases`` and score them with the Keras model, listing files that fail to decode."""
    config = loaded.preprocessing
    pixels = np.empty((len(cases), config.height, config.width, 3), dtype=np.uint8)
    decoded: list[Case] = []
    failed: list[FailedCase] = []
    for case in cases:
        try:
            pixels[len(decoded)] = load_pixels(case.path, config.size, config.resize)
        except InputError as error:
            failed.append(failure_of(case, error))
            continue
        decoded.append(case)
    log_failures(failed, len(cases))
    probabilities = (
        predict_probabilities(loaded.model, pixels[: len(decoded)], config, loaded.test_time_augmentation)
        if decoded
        else np.empty(0)
    )
    return ScoredCases(tuple(decoded), probabilities, tuple(failed))
