"""Choose a trained Keras model's decision threshold again, without training it again.

The new threshold is chosen on the validation split, as ``edgefrac train``
chooses it, for a new target sensitivity or test-time augmentation. The
training record keeps every earlier threshold under ``previous_thresholds``,
and ``edgefrac convert`` and ``edgefrac evaluate`` use the new one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

from converters.pixels import load_entries
from converters.scoring import record_augmentation
from converters.split import read_split
from converters.tf import keras
from converters.training import check_both_classes, choose_threshold, model_record_path, read_model_record
from edgefrac.errors import ModelFileError, UsageError
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

    ``target_sensitivity`` and ``augmentation`` default to the record's.
    Returns the new record.

    Raises:
        UsageError: no training record, or a split file with other training images.
        ModelFileError: Keras cannot load the model.
    """
    model_path = Path(model_path)
    record_path = model_record_path(model_path)
    record = read_model_record(model_path)
    if not isinstance(record, dict) or not isinstance(record.get("threshold"), dict) or "preprocessing" not in record:
        raise UsageError(
            f"no training record with a threshold and preprocessing at {record_path}; keep the .json that "
            "`edgefrac train` wrote beside the .keras file"
        )
    split = read_split(split_path, data_root)
    check_training_record(split_path, split, record, model_path)
    config = PreprocessConfig.from_dict(record["preprocessing"])
    try:
        model = keras.models.load_model(model_path, compile=False)
    except (OSError, ValueError) as error:
        raise ModelFileError(f"Keras cannot load {model_path} ({type(error).__name__}: {error})") from None
    pixels, labels, entries = load_entries(split, split.subset("validation", decodable_only=True), config)
    check_both_classes(
        split_path, "decoded validation", entries, "check that --data points at the dataset the split file was made from"
    )

    previous = {
        "threshold": record["threshold"],
        "test_time_augmentation": record_augmentation(record, f"training record {record_path}").value,
        "validation_auc": record.get("validation_auc"),
        "replaced": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    target = target_sensitivity or record["threshold"].get("target_sensitivity") or 0.90
    augmentation = augmentation or record_augmentation(record, f"training record {record_path}")
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


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that an interrupted run leaves the old record whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
