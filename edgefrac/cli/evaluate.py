"""``edgefrac evaluate``: metrics of a Keras model or a model file on one split.

A model file (``.efm`` or ``.tflite``) is scored by the device runtime alone,
without TensorFlow. A ``.keras`` model needs the ``convert`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefrac.classifier import Overrides
from edgefrac.cli import main
from edgefrac.cli.overrides import override_options, overrides_from
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.errors import UsageError
from edgefrac.evaluation import DEFAULT_RESAMPLES, Case, evaluate as evaluate_scores, find_changed_files
from edgefrac.exitcodes import ExitCode
from edgefrac.splitfile import Split, read_split

SPLIT_NAMES = ("train", "validation", "test")
KERAS_SUFFIX = ".keras"
MODEL_FILE_SUFFIXES = (".efm", ".tflite")


def read_cases(split: Split, split_name: str) -> list[Case]:
    """Return the images of ``split_name`` in ``split``, with paths under its data folder."""
    return [
        Case(
            image_id=entry.image_id,
            path=split.path_of(entry),
            label=entry.label,
            region=entry.region,
            hardware=entry.hardware,
            decodes_fully=entry.decodes_fully,
            sha256=entry.sha256 or None,
        )
        for entry in split.subset(split_name)
    ]


def _score_model_file(model: Path, cases: list[Case], overrides: Overrides, split_file: Path, split: Split):
    from edgefrac.classifier import FractureClassifier
    from edgefrac.evaluation import score_cases
    from edgefrac.splitfile import check_training_record

    classifier = FractureClassifier.from_path(model, overrides=overrides)
    # The card keeps the split file's hash, and the training ids' hash when convert read a recent training record.
    provenance = classifier.model.card.provenance if classifier.model.card is not None else {}
    recorded = {
        "split_file_sha256": provenance.get("split_file_sha256"),
        "split_ids_sha256": (provenance.get("training") or {}).get("split_ids_sha256"),
    }
    check_training_record(split_file, split, recorded, model)
    threshold = overrides.threshold
    source = "command line" if threshold is not None else "model card"
    if threshold is None and classifier.model.card is None:
        source = "default 0.5 of a model without a card"
    elif threshold is None and classifier.card.threshold.chosen_on != classifier.model.card.threshold.chosen_on:
        source = classifier.card.threshold.chosen_on
    info = {
        "path": str(model),
        "kind": "model file",
        "name": classifier.card.name,
        "architecture": classifier.card.architecture,
        "sha256": classifier.model.sha256,
        "runtime": classifier.runtime.info.describe(),
        "preprocessing": classifier.preprocessing.to_dict(),
        "output_kind": classifier.card.output_kind.value,
        "test_time_augmentation": classifier.card.test_time_augmentation.value,
    }
    return score_cases(classifier, cases), classifier.threshold, source, info


def _score_keras(model: Path, cases: list[Case], threshold: float | None, split_file: Path, split: Split):
    from converters.evaluation import load_keras_model, score_keras_cases
    from converters.training import read_model_record
    from edgefrac.splitfile import check_training_record

    loaded = load_keras_model(model)
    # The record names the training images, so a split file from another training run is caught here.
    check_training_record(split_file, split, read_model_record(model), model)
    info = {
        "path": str(model),
        "kind": "keras",
        "name": model.stem,
        "architecture": loaded.architecture,
        "test_time_augmentation": loaded.test_time_augmentation.value,
    }
    if threshold is None:
        return score_keras_cases(loaded, cases), loaded.threshold, "training record", info
    return score_keras_cases(loaded, cases), threshold, "command line", info


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--split-file", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Split file written by `edgefrac split`.",
)
@click.option(
    "--data", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Dataset folder (default: the folder recorded in the split file).",
)
@click.option("--split", "split_name", type=click.Choice(SPLIT_NAMES), default="test", show_default=True)
@click.option(
    "--output", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder for metrics.json, metrics.md and roc.png (the plot needs the bench extra).",
)
@click.option(
    "--threshold", type=FiniteFloatRange(0.0, 1.0), default=None,
    help="Decision threshold on the fracture probability (default: the model card's or training record's).",
)
@click.option(
    "--resamples", type=click.IntRange(min=1), default=DEFAULT_RESAMPLES, show_default=True,
    help="Bootstrap resamples of the AUC confidence interval.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON instead of a table.")
@override_options("scaling", "resize", "output_kind", "test_time_augmentation")
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: Path,
    split_file: Path,
    data: Path | None,
    split_name: str,
    output: Path | None,
    threshold: float | None,
    resamples: int,
    as_json: bool,
    scaling: str | None,
    resize: str | None,
    output_kind: str | None,
    test_time_augmentation: str | None,
) -> None:
    """Evaluate MODEL (.keras, .efm or .tflite) on one split of a split file.

    Reports ROC-AUC with a bootstrap 95% CI and sensitivity, specificity,
    PPV, NPV, F1 and accuracy at the model's threshold, overall, per body
    region and with and without orthopaedic hardware. Images that fail to
    decode are left out and listed: on stderr with the table, in the
    'failed' list with --json. Images whose bytes differ from the SHA-256 in
    the split file are scored, counted and listed as 'changed_files'. Exits 3
    when an image that the split file marks as decodable fails.

    --scaling, --resize, --output-kind and --test-time-augmentation replace
    the model card's values of an .efm or .tflite model; a plain .tflite has
    no card and needs them when it was trained otherwise.
    """
    from edgefrac.evaluation_report import failure_lines, require_matplotlib, to_text_table, write_outputs

    suffix = model.suffix.lower()
    if suffix != KERAS_SUFFIX and suffix not in MODEL_FILE_SUFFIXES:
        raise UsageError(f"cannot evaluate {model}: expected a .keras model, an .efm model file or a .tflite file")
    overrides = overrides_from(
        threshold=threshold,
        scaling=scaling,
        resize=resize,
        output_kind=output_kind,
        test_time_augmentation=test_time_augmentation,
    )
    if suffix == KERAS_SUFFIX and (scaling or resize or output_kind or test_time_augmentation):
        raise UsageError(
            "--scaling, --resize, --output-kind and --test-time-augmentation apply to .efm and .tflite models; "
            "a .keras model takes its preprocessing from its training record, so drop them"
        )
    if output is not None:
        # Fail before the slow scoring rather than after it.
        require_matplotlib()

    split = read_split(split_file, data)
    cases = read_cases(split, split_name)
    if not cases:
        raise UsageError(f"split {split_name!r} of {split_file} contains no images")
    changed = find_changed_files(cases)
    if suffix == KERAS_SUFFIX:
        scored, used_threshold, source, model_info = _score_keras(model, cases, threshold, split_file, split)
    else:
        scored, used_threshold, source, model_info = _score_model_file(model, cases, overrides, split_file, split)

    report = evaluate_scores(
        scored,
        used_threshold,
        threshold_source=source,
        model=model_info,
        split={"file": str(split_file), "name": split_name, "images": len(cases)},
        resamples=resamples,
        changed=changed,
    )
    if output is not None:
        write_outputs(report, output)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        click.echo(to_text_table(report), nl=False)
        for line in failure_lines(report):
            click.echo(line, err=True)
    if report.unexpected_failures:
        listed = "in the 'failed' list of the JSON output" if as_json else "in the list above"
        click.echo(
            f"Error: {report.unexpected_failures} images that the split file marks as decodable could not be read or decoded; "
            f"they are named {listed}",
            err=True,
        )
        ctx.exit(ExitCode.SOME_INPUTS_FAILED)
