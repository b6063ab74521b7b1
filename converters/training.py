"""Train a fracture classifier on the training split of a split file.

Augmentation runs on training batches only, after the split. Early stopping
watches validation ROC-AUC in each phase, and the saved weights are those of
the best epoch over all phases (for MobileNetV2, head and fine-tuning). The
decision threshold is then chosen on the validation split to reach a target
sensitivity, scoring each image in the views of the recipe's test-time
augmentation (``edgefrac.tta``). The model is written as ``NAME.keras``
beside a ``NAME.json`` training record that ``edgefrac convert`` and
``edgefrac evaluate`` read.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from pathlib import Path

import numpy as np

from converters import architectures
from converters.architectures import Architecture
from converters.calibration import stratified_sample
from converters.pixels import load_entries
from converters.scoring import keras_probabilities
from converters.split import read_split
from converters.tf import keras, tf
from edgefrac import metrics
from edgefrac.dataset import file_sha256
from edgefrac.errors import UsageError
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import TestTimeAugmentation

logger = logging.getLogger(__name__)

RECORD_FORMAT = "edgefrac-training/1"


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """Every setting that shapes a trained model; stored in its training record."""

    architecture: Architecture = Architecture.CUSTOM_CNN
    resolution: int | None = None
    alpha: float = 0.35
    weights: str | None = None
    epochs: int = 30
    finetune_epochs: int = 0
    finetune_layers: int = 0
    batch_size: int = 32
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    patience: int = 6
    seed: int = 1234
    target_sensitivity: float = 0.90
    augment: bool = True
    max_train_images: int | None = None
    time_budget_minutes: float | None = None
    initial_model: str | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["architecture"] = Architecture(self.architecture).value
        return data


def model_record_path(model_path: str | Path) -> Path:
    """Return the training-record path that belongs to ``model_path`` (``NAME.json``)."""
    return Path(model_path).with_suffix(".json")


def read_model_record(model_path: str | Path) -> dict | None:
    """Read the training record beside a Keras model, or return None when there is none.

    Raises:
        UsageError: the record is not a JSON object.
    """
    path = model_record_path(model_path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise UsageError(
            f"training record {path} is not valid JSON ({error}); restore the .json that `edgefrac train` wrote"
        ) from None
    if not isinstance(record, dict):
        raise UsageError(
            f"training record {path} contains a JSON {type(record).__name__}, not an object; restore the .json that "
            "`edgefrac train` wrote"
        )
    return record


class _EpochLog(keras.callbacks.Callback):
    """Log one line per epoch, so long runs can be followed in the log file."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, (int, float)))
        logger.info("%s epoch %d: %s (%.0f s)", self.phase, epoch + 1, shown, time.monotonic() - self.started)


class _TimeBudget(keras.callbacks.Callback):
    """Stop training after the epoch that ends past the budget; the best epoch's weights are still restored."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() >= self.deadline:
            logger.info("time budget used up after epoch %d; stopping", epoch + 1)
            self.model.stop_training = True


class BestEpoch(keras.callbacks.Callback):
    """Keep a copy of the weights of the epoch with the highest validation AUC, over every phase it watches.

    One instance is passed to each phase's ``fit``, so a fine-tuning phase that
    ends below the head phase's best epoch does not replace its weights.
    """

    def __init__(self):
        super().__init__()
        self.phase = ""
        self.val_auc = -np.inf
        self.epoch: dict | None = None
        self.snapshot: list | None = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_auc")
        if value is None or not value > self.val_auc:
            return
        self.val_auc = float(value)
        self.epoch = {"phase": self.phase, "epoch": epoch + 1, "val_auc": self.val_auc}
        # Pairs of (variable, value): the order of model.weights may change when layers are
        # frozen or unfrozen between phases, so the values are restored by variable.
        self.snapshot = [(variable, np.array(variable.numpy())) for variable in self.model.weights]

    def restore(self) -> None:
        """Set the watched model's weights to the best epoch's; do nothing before the first epoch."""
        for variable, value in self.snapshot or ():
            variable.assign(value)


def _scale_in_graph(images, config: PreprocessConfig):
    low, high = config.scaling.bounds
    return tf.cast(images, tf.float32) * ((high - low) / 255.0) + low


def _datasets(train_pixels, train_labels, val_pixels, val_labels, config, recipe):
    augmenter = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.04, fill_mode="constant"),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant"),
            keras.layers.RandomContrast(0.15),
        ],
        name="augmentation",
    )

    def train_map(images, labels):
        images = tf.cast(images, tf.float32)
        if recipe.augment:
            images = tf.clip_by_value(augmenter(images, training=True), 0.0, 255.0)
        return _scale_in_graph(images, config), labels

    train = (
        tf.data.Dataset.from_tensor_slices((train_pixels, train_labels.astype(np.float32)))
        .shuffle(len(train_pixels), seed=recipe.seed, reshuffle_each_iteration=True)
        .batch(recipe.batch_size)
        # The augmentation layers draw from stateful seed generators. Parallel calls would
        # consume their states in a varying order, so the map runs sequentially (no
        # num_parallel_calls) and the same --seed gives the same augmented batches.
        # Prefetch still overlaps the augmentation with training.
        .map(train_map)
        .prefetch(tf.data.AUTOTUNE)
    )
    validation = (
        tf.data.Dataset.from_tensor_slices((val_pixels, val_labels.astype(np.float32)))
        .batch(64)
        .map(lambda x, y: (_scale_in_graph(x, config), y))
        .prefetch(tf.data.AUTOTUNE)
    )
    return train, validation


def _class_weights(labels: np.ndarray) -> dict[int, float]:
    counts = np.bincount(labels, minlength=2)
    return {c: float(labels.size / (2.0 * counts[c])) for c in (0, 1) if counts[c]}


def _compile(model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), "binary_accuracy"],
    )


def _fit(model, train, validation, epochs, recipe, class_weight, phase, history, best, deadline=None):
    """Run one training phase, then restore the weights of the best epoch seen so far in any phase."""
    if epochs <= 0:
        return
    if deadline is not None and time.monotonic() >= deadline:
        logger.info("time budget used up; skipping the %s phase", phase)
        return
    stopper = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=recipe.patience)
    best.phase = phase
    callbacks = [stopper, best, _EpochLog(phase)]
    if deadline is not None:
        callbacks.append(_TimeBudget(deadline))
    result = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        class_weight=class_weight,
        callbacks=callbacks,
        verbose=0,
    )
    for values in zip(*result.history.values()):
        history.append({"phase": phase, **{k: float(v) for k, v in zip(result.history, values)}})
    best.restore()
    if best.epoch is not None:
        logger.info("kept the weights of %s epoch %d (val_auc %.4f)", best.epoch["phase"], best.epoch["epoch"], best.val_auc)


def _read_initial_model(path: str | Path, config: PreprocessConfig):
    """Load the Keras model at ``path`` and check that it takes this run's input size."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"initial model {path} not found: pass a .keras file written by edgefrac train")
    try:
        initial = keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise UsageError(
            f"invalid initial model {path}: not a readable Keras model ({error}); pass a .keras file written by edgefrac train"
        ) from None
    shape = tuple(initial.inputs[0].shape[1:])
    if shape != (config.height, config.width, 3):
        raise UsageError(
            f"initial model {path} takes {shape[0]}x{shape[1]} inputs but this run trains at "
            f"{config.height}x{config.width}; pass --resolution {shape[0]} with the --arch and --alpha it was trained with"
        )
    return initial


def _load_initial_weights(model, initial, path: str | Path) -> dict:
    """Copy the weights of the loaded ``initial`` model into ``model``; both must share one layout."""
    if len(model.weights) != len(initial.weights):
        raise UsageError(
            f"initial model {path} does not match the recipe: it has {len(initial.weights)} weight tensors where "
            f"{len(model.weights)} are needed; pass the same --arch, --alpha and --resolution it was trained with"
        )
    for ours, theirs in zip(model.weights, initial.weights):
        if tuple(ours.shape) != tuple(theirs.shape):
            raise UsageError(
                f"initial model {path} does not match the recipe: its weight {theirs.path} has shape "
                f"{tuple(theirs.shape)} where {ours.path} needs {tuple(ours.shape)}; "
                "pass the same --arch, --alpha and --resolution it was trained with"
            )
    model.set_weights(initial.get_weights())
    logger.info("starting from the weights of %s", path)
    return describe_initial_model(path)


def describe_initial_model(path: str | Path) -> dict:
    """Describe a starting model for a training record: file, hash and, if recorded, how it was trained."""
    path = Path(path)
    description = {"file": path.name, "sha256": file_sha256(path)}
    try:
        record = read_model_record(path)
    except (UsageError, OSError) as error:
        logger.warning("training record of %s not readable, so the record names the file only: %s", path, error)
        record = None
    if isinstance(record, dict):
        description["recipe"] = record.get("recipe")
        description["epochs"] = len(record.get("history", []))
        description["validation_auc"] = record.get("validation_auc")
        description["training_seconds"] = record.get("training_seconds")
        description["initial_model"] = record.get("initial_model")
    return description


def predict_probabilities(
    model,
    pixels: np.ndarray,
    config: PreprocessConfig,
    augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE,
    batch_size: int = 64,
) -> np.ndarray:
    """Run a Keras model over uint8 pixels, in each view of ``augmentation``, and return one probability per image."""
    return keras_probabilities(model, config.scaling.apply(pixels), augmentation, batch_size=batch_size)


def choose_threshold(
    model,
    pixels: np.ndarray,
    labels: np.ndarray,
    config: PreprocessConfig,
    target_sensitivity: float,
    augmentation: TestTimeAugmentation,
) -> tuple[dict, float]:
    """Choose the threshold that reaches ``target_sensitivity`` on validation images.

    Returns the record's ``threshold`` entry and the validation ROC-AUC.
    """
    scores = predict_probabilities(model, pixels, config, augmentation)
    threshold = metrics.threshold_for_sensitivity(scores, labels, target_sensitivity)
    at_threshold = metrics.confusion(scores, labels, threshold)
    entry = {
        "value": threshold,
        "target_sensitivity": target_sensitivity,
        "chosen_on": "validation",
        "sensitivity": at_threshold.sensitivity,
        "specificity": at_threshold.specificity,
        "images": at_threshold.count,
    }
    return entry, metrics.roc_auc(scores, labels)


def check_record_path(split_path: str | Path, output: str | Path) -> None:
    """Raise UsageError when the training record of ``output`` would overwrite the split file or another file.

    An existing training record is replaced, as a new model replaces the old one.
    """
    record_path = model_record_path(output)
    if record_path.resolve() == Path(split_path).resolve():
        raise UsageError(
            f"--output {output} would write its training record to {record_path}, which is the --split-file; "
            "pass an --output with another name, such as the split file's name plus '-model.keras'"
        )
    if record_path.exists() and not _is_training_record(record_path):
        raise UsageError(
            f"--output {output} would write its training record to {record_path}, which exists and is not a "
            "training record; pass an --output with another name, or move that file"
        )


def _is_training_record(path: Path) -> bool:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and document.get("format") == RECORD_FORMAT


def training_subset(entries: list, size: int | None, seed: int) -> list:
    """Pick ``size`` of the training ``entries``, stratified by label and then by body region.

    Each label gets its share of ``size`` (at least one image when ``size`` is 2
    or more), and within a label the regions are sampled in proportion.
    Returns all ``entries`` when ``size`` is None or not smaller.
    """
    if size is None or size >= len(entries):
        return list(entries)
    by_label = {label: [e for e in entries if e.label == label] for label in sorted({e.label for e in entries})}
    counts = {label: max(1, round(size * len(members) / len(entries))) for label, members in by_label.items()}
    # Rounding can overshoot or undershoot by one per label, so the largest class takes the difference.
    largest = max(by_label, key=lambda label: len(by_label[label]))
    counts[largest] = max(1, counts[largest] + size - sum(counts.values()))
    chosen = []
    for label, members in by_label.items():
        chosen.extend(stratified_sample(members, min(counts[label], len(members)), seed))
    return sorted(chosen, key=lambda e: e.image_id)


def check_both_classes(split_path: str | Path, name: str, entries: list, hint: str) -> None:
    """Raise UsageError unless ``entries`` (the ``name`` images) contain both classes."""
    fractured = sum(entry.label == 1 for entry in entries)
    not_fractured = len(entries) - fractured
    if fractured and not_fractured:
        return
    raise UsageError(
        f"the {name} images of split file {split_path} contain {fractured} fractured and {not_fractured} "
        f"non-fractured decodable images, but training needs both classes in training and validation; {hint}"
    )


def _select_entries(split, split_path, recipe: TrainingRecipe) -> tuple[list, list]:
    """Return the training and validation entries, checked to contain both classes."""
    fix_split = "make a new split with edgefrac split from a folder with both classes, or move entries in the split file"
    train_entries = split.subset("train", decodable_only=True)
    left_out = len(split.subset("train")) - len(train_entries)
    logger.info("training split: %d images, %d truncated ones left out", len(train_entries), left_out)
    check_both_classes(split_path, "training", train_entries, fix_split)
    val_entries = split.subset("validation", decodable_only=True)
    check_both_classes(split_path, "validation", val_entries, fix_split)

    if recipe.max_train_images is not None:
        train_entries = training_subset(train_entries, recipe.max_train_images, recipe.seed)
        logger.info("training on %d of the training images (--max-train-images)", len(train_entries))
        check_both_classes(split_path, "selected training", train_entries, "pass a larger --max-train-images")
    return train_entries, val_entries


def _build_model(architecture: Architecture, config: PreprocessConfig, recipe: TrainingRecipe):
    """Build the model with its starting weights; return (model, MobileNetV2 backbone or None, initial model record)."""
    # The starting weights are read here, before any image is decoded, so a wrong
    # --weights or --initial-model file fails at once.
    initial_model = _read_initial_model(recipe.initial_model, config) if recipe.initial_model else None
    if architecture is Architecture.CUSTOM_CNN:
        model, backbone = architectures.build_custom_cnn(config.height), None
    else:
        model, backbone = architectures.build_mobilenet_v2(config.height, alpha=recipe.alpha, weights=recipe.weights)
    initial = None
    if initial_model is not None:
        initial = _load_initial_weights(model, initial_model, recipe.initial_model)
    return model, backbone, initial


def _unfreeze_top(backbone, layers: int) -> None:
    """Make the top ``layers`` backbone layers trainable, except batch normalization."""
    backbone.trainable = True
    for layer in backbone.layers[:-layers]:
        layer.trainable = False
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def train(
    split_path: str | Path,
    output: str | Path,
    recipe: TrainingRecipe,
    data_root: str | Path | None = None,
    augmentation: TestTimeAugmentation = TestTimeAugmentation.NONE,
) -> dict:
    """Train ``recipe`` on the split at ``split_path`` and write ``output`` (``.keras``) and its record.

    ``augmentation`` is the test-time augmentation the threshold is chosen
    with; the record names it, and the converted model files use it.
    """
    started = time.monotonic()
    output = Path(output)
    check_record_path(split_path, output)
    keras.utils.set_random_seed(recipe.seed)
    split = read_split(split_path, data_root)
    architecture = Architecture(recipe.architecture)
    config = architectures.preprocess_config(architecture, recipe.resolution)
    train_entries, val_entries = _select_entries(split, split_path, recipe)
    model, backbone, initial = _build_model(architecture, config, recipe)

    train_pixels, train_labels, train_entries = load_entries(split, train_entries, config)
    val_pixels, val_labels, val_entries = load_entries(split, val_entries, config)
    missing = "check that --data points at the dataset the split file was made from"
    check_both_classes(split_path, "decoded training", train_entries, missing)
    check_both_classes(split_path, "decoded validation", val_entries, missing)
    logger.info(
        "decoded %d training and %d validation images at %dx%d in %.0f s",
        len(train_labels), len(val_labels), config.width, config.height, time.monotonic() - started,
    )
    train_data, val_data = _datasets(train_pixels, train_labels, val_pixels, val_labels, config, recipe)
    class_weight = _class_weights(train_labels)
    history: list[dict] = []
    best = BestEpoch()
    deadline = started + 60.0 * recipe.time_budget_minutes if recipe.time_budget_minutes else None

    if backbone is None:
        _compile(model, recipe.learning_rate)
        _fit(model, train_data, val_data, recipe.epochs, recipe, class_weight, "train", history, best, deadline)
    else:
        backbone.trainable = False
        _compile(model, recipe.learning_rate)
        _fit(model, train_data, val_data, recipe.epochs, recipe, class_weight, "head", history, best, deadline)
        if recipe.finetune_epochs > 0 and recipe.finetune_layers > 0:
            _unfreeze_top(backbone, recipe.finetune_layers)
            _compile(model, recipe.finetune_learning_rate)
            _fit(
                model, train_data, val_data, recipe.finetune_epochs, recipe, class_weight, "finetune", history, best,
                deadline,
            )

    threshold, val_auc = choose_threshold(
        model, val_pixels, val_labels, config, recipe.target_sensitivity, augmentation
    )
    # Keras 3 saves the optimizer state of a compiled model, which triples the custom CNN's file
    # (Adam keeps two values per weight), and clone_model copies the compiled state. A functional
    # model over the same layers is not compiled, so it saves the weights only.
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)
    output.parent.mkdir(parents=True, exist_ok=True)
    inference_model.save(output)

    record = {
        "format": RECORD_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_file": output.name,
        "architecture": architecture.value,
        "preprocessing": config.to_dict(),
        "class_names": ["not_fractured", "fractured"],
        "threshold": threshold,
        "test_time_augmentation": augmentation.value,
        "validation_auc": val_auc,
        "split_file_sha256": file_sha256(Path(split_path)),
        "split_ids_sha256": {name: split.ids_hash(split.subset(name)) for name in ("train", "validation", "test")},
        "training_images": len(train_entries),
        "training_ids_sha256": split.ids_hash(train_entries),
        "best_epoch": best.epoch,
        "recipe": recipe.to_dict(),
        "initial_model": initial,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "training_seconds": round(time.monotonic() - started, 1),
        "history": history,
    }
    model_record_path(output).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info(
        "saved %s: validation AUC %.3f, threshold %.4f gives sensitivity %.3f specificity %.3f",
        output, val_auc, threshold["value"], threshold["sensitivity"], threshold["specificity"],
    )
    return record
