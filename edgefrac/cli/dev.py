"""``edgefrac split`` and ``edgefrac train``: the dev-machine commands before conversion.

``converters`` is imported inside each command because most of it needs
TensorFlow. ``edgefrac --help`` and the device commands therefore work without
TensorFlow, and a missing TensorFlow becomes an error naming the pip command
(exit 1).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import click

from edgefrac.cli import main
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.errors import UsageError
from edgefrac.tta import TestTimeAugmentation

ARCHITECTURES = ("cnn", "mobilenetv2")
PROGRESS_LOGGERS = ("converters", "edgefrac")
MIN_RESOLUTION = 32
"""Smallest input side of `edgefrac train`: MobileNetV2 in Keras needs 32 pixels or more."""


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into three train/validation/test fractions."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"invalid --fractions {text!r}: expected three numbers such as 0.7,0.15,0.15") from None
    if len(values) != 3:
        raise UsageError(f"invalid --fractions {text!r}: expected three numbers (train, validation, test)")
    if not all(math.isfinite(value) for value in values):
        raise UsageError(f"invalid --fractions {text!r}: expected finite numbers such as 0.7,0.15,0.15")
    return values


@main.command()
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Split file (JSON) to write.",
)
@click.option("--seed", default=1234, show_default=True, help="Random seed of the split.")
@click.option(
    "--fractions", default="0.7,0.15,0.15", show_default=True,
    help="Train, validation and test fractions, comma-separated, summing to 1.",
)
@click.option(
    "--positive-class", default=None,
    help="Name of the fractured class folder (default: the folder named like Fractured or positive).",
)
def split(data: Path, output: Path, seed: int, fractions: str, positive_class: str | None) -> None:
    """Split the labelled folder DATA into train, validation and test sets.

    DATA is FracAtlas's layout (images/Fractured, images/Non_fractured and
    dataset.csv) or any folder with one subfolder per class. Byte-identical
    files stay in one split, and each (label, body region) stratum is divided
    by the fractions. Truncated files and files that do not decode as images
    are marked and left out of training and evaluation (column "left out").
    Every later command reads the split file and rejects one with unknown
    split names, missing or extra keys, or byte-identical files in two splits.

    Exit codes: 0 written (with a warning when a split is empty or lacks a
    class), 1 the split file cannot be written, 2 invalid options or a class
    folder without images.
    """
    from converters.split import SPLITS, make_split, write_split

    result = make_split(data, seed=seed, fractions=parse_fractions(fractions), positive_class=positive_class)
    write_split(result, output)
    click.echo(f"Wrote {output}: {len(result.entries)} images from {result.root}, seed {seed}")
    click.echo(f"{'split':<12}{'images':>8}{'fractured':>11}{'left out':>10}")
    for name in SPLITS:
        entries = result.subset(name)
        fractured = sum(entry.label for entry in entries)
        left_out = sum(not entry.decodes_fully for entry in entries)
        click.echo(f"{name:<12}{len(entries):>8}{fractured:>11}{left_out:>10}")


@contextlib.contextmanager
def progress_logging(log_file: Path | None):
    """Send INFO progress of the training libraries to stderr and, if given, to ``log_file``.

    The levels and handlers in place before are restored afterwards.
    """
    loggers = [logging.getLogger(name) for name in PROGRESS_LOGGERS]
    previous_levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    handler = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        for logger, level in zip(loggers, previous_levels):
            logger.setLevel(level)


def resolve_weights(weights: str, architecture: str) -> str | None:
    """Check ``--weights`` before any image is decoded and return the recipe's value (None for random)."""
    if weights.lower() == "none":
        return None
    if architecture != "mobilenetv2":
        raise UsageError(f"--weights {weights} applies to --arch mobilenetv2 only; the {architecture} starts random")
    if weights.lower() == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise UsageError(
            f"weight file {path} not found; pass --weights PATH to a MobileNetV2 no-top .h5 file "
            "for the chosen --alpha, 'imagenet' (Keras downloads it) or 'none'"
        )
    return str(path.resolve())


def check_epochs(architecture: str, epochs: int, finetune_epochs: int, finetune_layers: int) -> None:
    """Reject an epoch schedule that trains nothing or names a fine-tuning phase that would not run.

    Only MobileNetV2 has a fine-tuning phase, and it runs when both of its options are above 0.
    """
    if architecture != "mobilenetv2" and (finetune_epochs or finetune_layers):
        raise UsageError(
            f"--finetune-epochs and --finetune-layers apply to --arch mobilenetv2 only; drop them for --arch "
            f"{architecture}"
        )
    if bool(finetune_epochs) != bool(finetune_layers):
        raise UsageError(
            f"fine-tuning needs both --finetune-epochs and --finetune-layers above 0 (got {finetune_epochs} and "
            f"{finetune_layers}); pass both, or neither for a head-only run"
        )
    finetunes = architecture == "mobilenetv2" and finetune_epochs > 0 and finetune_layers > 0
    if epochs == 0 and not finetunes:
        raise UsageError(
            f"invalid --epochs 0 with --arch {architecture}: the run would train nothing; pass --epochs 1 or more, "
            "or with --arch mobilenetv2 pass --finetune-epochs and --finetune-layers above 0"
        )


@main.command()
@click.option(
    "--split-file", "split_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Split file written by `edgefrac split`.",
)
@click.option(
    "--data", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Dataset folder (default: the folder recorded in the split file).",
)
@click.option("--arch", "architecture", type=click.Choice(ARCHITECTURES), default="cnn", show_default=True)
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Model path NAME.keras; the training record is written to NAME.json beside it.",
)
@click.option(
    "--weights", default="none", show_default=True,
    help="MobileNetV2 starting weights: a no-top .h5 file, 'imagenet' (downloaded by Keras) or 'none' (random).",
)
@click.option(
    "--alpha", type=FiniteFloatRange(min=0.0, min_open=True), default=0.35, show_default=True,
    help="MobileNetV2 width multiplier.",
)
@click.option(
    "--resolution", type=click.IntRange(min=MIN_RESOLUTION), default=None,
    help=f"Input height and width in pixels, {MIN_RESOLUTION} or more (default: 128 for cnn, 224 for mobilenetv2).",
)
@click.option(
    "--epochs", type=click.IntRange(min=0), default=30, show_default=True,
    help="Maximum epochs of the first phase (the whole CNN, or the MobileNetV2 head). "
    "0 skips the MobileNetV2 head phase, for a fine-tuning-only run.",
)
@click.option(
    "--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
    help="Maximum MobileNetV2 fine-tuning epochs.",
)
@click.option(
    "--finetune-layers", type=click.IntRange(min=0), default=0, show_default=True,
    help="Number of top MobileNetV2 backbone layers unfrozen for fine-tuning.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per training step.")
@click.option(
    "--learning-rate", type=FiniteFloatRange(min=0.0, min_open=True), default=1e-3, show_default=True,
    help="Adam learning rate of the first phase.",
)
@click.option(
    "--finetune-learning-rate", type=FiniteFloatRange(min=0.0, min_open=True), default=1e-4, show_default=True,
    help="Adam learning rate of fine-tuning.",
)
@click.option(
    "--patience", type=click.IntRange(min=0), default=6, show_default=True,
    help="Epochs without a better validation AUC before early stopping.",
)
@click.option("--seed", default=1234, show_default=True, help="Seed of weights, shuffling and augmentation.")
@click.option(
    "--target-sensitivity", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=0.90, show_default=True,
    help="Validation sensitivity the decision threshold must reach.",
)
@click.option(
    "--max-train-images", type=click.IntRange(min=2), default=None,
    help="Train on N training images only, a sample stratified by class and body region (for quick trials).",
)
@click.option(
    "--time-budget", "time_budget_minutes", type=FiniteFloatRange(min=0.0, min_open=True), default=None,
    help="Stop after the first epoch that ends past this many minutes; the best epoch so far is kept.",
)
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the per-epoch progress to this file.",
)
@click.option("--no-augment", is_flag=True, help="Train without flips, rotation, zoom and contrast changes.")
@click.option(
    "--test-time-augmentation",
    type=click.Choice([member.value for member in TestTimeAugmentation]),
    default=TestTimeAugmentation.NONE.value,
    show_default=True,
    help="Views each image is scored in when the threshold is chosen and on the device: 'horizontal_flip' also "
    "scores the mirror image and averages the two logits, at twice the inference time. Early stopping and "
    "the best epoch still use one-view validation AUC.",
)
@click.option(
    "--initial-model", type=click.Path(dir_okay=False), default=None,
    help="Start from the weights of this .keras model (same --arch, --alpha and --resolution) "
    "to continue an earlier run, for example at a lower learning rate.",
)
def train(
    split_file: Path,
    data: Path | None,
    architecture: str,
    output: Path,
    weights: str,
    alpha: float,
    resolution: int | None,
    epochs: int,
    finetune_epochs: int,
    finetune_layers: int,
    batch_size: int,
    learning_rate: float,
    finetune_learning_rate: float,
    patience: int,
    seed: int,
    target_sensitivity: float,
    max_train_images: int | None,
    time_budget_minutes: float | None,
    log_file: Path | None,
    no_augment: bool,
    test_time_augmentation: str,
    initial_model: str | None,
) -> None:
    """Train a classifier on the training split and choose its threshold on the validation split.

    Writes the model (.keras) and a training record (.json) with the recipe,
    the threshold and the validation sensitivity and specificity it gave.
    Per-epoch progress goes to stderr (and --log-file).
    """
    if output.suffix != ".keras":
        raise UsageError(f"invalid --output {output}: the model path must end in .keras")
    check_epochs(architecture, epochs, finetune_epochs, finetune_layers)
    source = click.get_current_context().get_parameter_source("finetune_learning_rate")
    if architecture != "mobilenetv2" and source is click.core.ParameterSource.COMMANDLINE:
        raise UsageError(f"--finetune-learning-rate applies to --arch mobilenetv2 only; drop it for --arch {architecture}")
    starting_weights = resolve_weights(weights, architecture)
    if initial_model is not None and not Path(initial_model).is_file():
        raise UsageError(f"invalid --initial-model {initial_model!r}: file not found; pass a .keras file from edgefrac train")

    from converters.training import TrainingRecipe, check_record_path, model_record_path
    from converters.training import train as train_model

    check_record_path(split_file, output)

    recipe = TrainingRecipe(
        architecture=architecture,
        resolution=resolution,
        alpha=alpha,
        weights=starting_weights,
        epochs=epochs,
        finetune_epochs=finetune_epochs,
        finetune_layers=finetune_layers,
        batch_size=batch_size,
        learning_rate=learning_rate,
        finetune_learning_rate=finetune_learning_rate,
        patience=patience,
        seed=seed,
        target_sensitivity=target_sensitivity,
        augment=not no_augment,
        max_train_images=max_train_images,
        time_budget_minutes=time_budget_minutes,
        initial_model=initial_model,
    )
    with progress_logging(log_file):
        record = train_model(
            split_file, output, recipe, data_root=data, augmentation=TestTimeAugmentation(test_time_augmentation)
        )
    threshold = record["threshold"]
    click.echo(f"Wrote {output} and {model_record_path(output)}")
    click.echo(
        f"validation AUC {record['validation_auc']:.3f}; threshold {threshold['value']:.4f} gives sensitivity "
        f"{threshold['sensitivity']:.3f} and specificity {threshold['specificity']:.3f} "
        f"on {threshold['images']} validation images"
    )
