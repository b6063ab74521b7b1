"""``edgefrac threshold``: choose a trained Keras model's threshold again on the validation split."""

from __future__ import annotations

from pathlib import Path

import click

from edgefrac.cli import main
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.errors import UsageError
from edgefrac.tta import TestTimeAugmentation


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--split-file", "split_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Split file the model was trained with.",
)
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
    help="Dataset folder (default: the folder recorded in the split file).",
)
@click.option(
    "--target-sensitivity", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=None,
    help="Validation sensitivity the threshold must reach [default: the training record's].",
)
@click.option(
    "--test-time-augmentation",
    type=click.Choice([member.value for member in TestTimeAugmentation]),
    default=None,
    help="Views each image is scored in: 'horizontal_flip' also scores the mirror image and averages the two "
    "logits [default: the training record's].",
)
def threshold(
    model: Path,
    split_file: Path,
    data: Path | None,
    target_sensitivity: float | None,
    test_time_augmentation: str | None,
) -> None:
    """Choose the decision threshold of a trained Keras MODEL again, on the validation split.

    For a new target sensitivity or test-time augmentation, without training
    again. The training record beside MODEL (NAME.json) gets the new
    threshold, and keeps the old one under 'previous_thresholds'; convert the
    model again to carry it into the model files.

    Exit codes: 0 done; 1 the model could not be loaded, or the record could
    not be written and is left as it was; 2 invalid options. Exit code 2 also
    covers a damaged training record and a split file with other training
    images than the record's.
    """
    if model.suffix != ".keras":
        raise UsageError(f"invalid MODEL {model}: expected a .keras model written by `edgefrac train`")
    from converters.threshold import rechoose_threshold

    record = rechoose_threshold(
        model,
        split_file,
        data,
        target_sensitivity=target_sensitivity,
        augmentation=None if test_time_augmentation is None else TestTimeAugmentation(test_time_augmentation),
    )
    chosen, previous = record["threshold"], record["previous_thresholds"][-1]
    click.echo(
        f"threshold {previous['threshold']['value']:.4f} -> {chosen['value']:.4f} "
        f"(test-time augmentation {record['test_time_augmentation']}): validation sensitivity "
        f"{chosen['sensitivity']:.3f}, specificity {chosen['specificity']:.3f} on {chosen['images']} images, "
        f"AUC {record['validation_auc']:.3f}"
    )
