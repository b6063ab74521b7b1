"""Choose a trained Keras model's decision threshold again, without training it again.

The new threshold is chosen on the validation split, as ``edgefrac train``
chooses it, for a new target sensitivity or test-time augmentation. The
training record keeps every earlier threshold under ``previous_thresholds``,
and ``edgefrac convert`` and ``edgefrac evaluate`` use the new one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
from pathlib import Path

from converters.convert import check_input_size
from converters.pixels import load_entries
from converters.scoring import record_augmentation
from converters.split import read_split
from converters.tf import keras
from converters.training import check_both_classes, choose_threshold, model_record_path, read_model_record
from edgefrac.errors import ModelFileError, OutputWriteError, UsageError
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.splitfile import check_training_record
from edgefrac.tta import TestTimeAugmentation

logger = logging.getLogger(__name__)


def rechoose_threshold(
    model_path: str | Path,
    split_path: str | Path,
    data_root: str | Path | None = None,
    *,
    target_sensitivity: float | None = None,
    augmentation: TestTimeAugmentation | None = None,
) -> dict:
    """Choose the threshold of the model at ``model_path`` on validation and rewrite its training record.

    ``target_sensitivity`` and ``augmentation`` default to the record's. An
    ``augmentation`` given here replaces the record's value even when that
    value is invalid. Returns the new record.

    Raises:
        UsageError: no usable training record, or a split file with other
            training images, or a model whose input differs from the record's.
        ModelFileError: Keras cannot load the model.
        OutputWriteError: the record cannot be written; it is left as it was.
    """
    model_path = Path(model_path)
    record_path = model_record_path(model_path)
    record = read_model_record(model_path)
    _check_record(record, record_path)
    target = target_sensitivity if target_sensitivity is not None else _recorded_target(record, record_path)
    if augmentation is None:
        augmentation = record_augmentation(record, f"training record {record_path}")
    split = read_split(split_path, data_root)
    check_training_record(split_path, split, record, model_path)
    config = PreprocessConfig.from_dict(record["preprocessing"])
    try:
        model = keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"Keras cannot load {model_path} ({type(error).__name__}: {error})") from None
    check_input_size(model, config, model_path, f"training record {record_path}")
    pixels, labels, entries = load_entries(split, split.subset("validation", decodable_only=True), config)
    check_both_classes(
        split_path, "decoded validation", entries, "check that --data points at the dataset the split file was made from"
    )

    previous = {
        "threshold": record["threshold"],
        "test_time_augmentation": record.get("test_time_augmentation", TestTimeAugmentation.NONE.value),
        "validation_auc": record.get("validation_auc"),
        "replaced": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    threshold, validation_auc = choose_threshold(model, pixels, labels, config, target, augmentation)
    updated = {
        **record,
        "threshold": threshold,
        "test_time_augmentation": augmentation.value,
        "validation_auc": validation_auc,
        "previous_thresholds": [*record.get("previous_thresholds", []), previous],
    }
    _write_atomically(record_path, json.dumps(updated, indent=1) + "\n")
    logger.info(
        "%s: threshold %.4f -> %.4f (test-time augmentation %s), validation sensitivity %.3f, specificity %.3f",
        record_path, previous["threshold"]["value"], threshold["value"], augmentation.value,
        threshold["sensitivity"], threshold["specificity"],
    )
    return updated


def _check_record(record: dict | None, record_path: Path) -> None:
    """Raise UsageError unless ``record`` has a preprocessing, a numeric threshold and a list of earlier ones."""
    restore = "restore the .json that `edgefrac train` wrote beside the .keras file"
    if record is None or "preprocessing" not in record or not isinstance(record.get("threshold"), dict):
        raise UsageError(f"no training record with a threshold and preprocessing at {record_path}; {restore}")
    value = record["threshold"].get("value")
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise UsageError(
            f"training record {record_path}: threshold value {json.dumps(value)} is not a probability; {restore}"
        )
    if not isinstance(record.get("previous_thresholds", []), list):
        raise UsageError(
            f"training record {record_path}: previous_thresholds {json.dumps(record['previous_thresholds'])} is not "
            f"a list; {restore}"
        )


def _recorded_target(record: dict, record_path: Path) -> float:
    """Return the record's target sensitivity, 0.90 when it names none."""
    target = record["threshold"].get("target_sensitivity")
    if target is None:
        return 0.90
    if not _is_number(target) or not 0.0 < target <= 1.0:
        raise UsageError(
            f"training record {record_path}: target_sensitivity {json.dumps(target)} is not in (0, 1]; pass "
            "--target-sensitivity"
        )
    return float(target)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that an interrupted run leaves the old record whole.

    Raises:
        OutputWriteError: the folder or the record cannot be written; no temporary file is left.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise OutputWriteError(
            f"cannot write training record {path} ({error.strerror or error}); make its folder writable"
        ) from None
