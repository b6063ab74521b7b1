"""``edgefrac convert``: quantize a trained Keras model into model files (needs TensorFlow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from edgefrac.card import OutputKind
from edgefrac.cli import main
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.errors import DriftExceededError, UsageError
from edgefrac.preprocessing import PreprocessConfig, ResizeMethod, ValueScaling

VARIANT_CHOICES = ("int8", "float32", "float16", "dynamic")


def _format(value) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _print_table(report) -> None:
    click.echo(
        f"source {report.source} (sha256 {report.source_sha256[:12]}), reference threshold "
        f"{report.reference_threshold:.4f}, target sensitivity {report.target_sensitivity:.2f}, "
        f"{report.calibration_images} calibration images, test-time augmentation "
        f"{report.test_time_augmentation.value}"
    )
    header = f"{'variant':<8} {'split':<10} {'agreement':>9} {'AUC ref':>8} {'AUC new':>8} {'dSens':>7} {'dSpec':>7} {'max|dp|':>8} {'sd logit':>8} {'sd near':>8} {'n near':>6}  {'threshold':>9}  file"
    click.echo(header)
    for result in report.results:
        for split_name, drift_report in (("validation", result.validation), ("test", result.test)):
            if drift_report is None:
                continue
            overall = drift_report.overall
            click.echo(
                f"{result.variant.value:<8} {split_name:<10} {overall.agreement:>9.4f} {_format(overall.reference_auc):>8} "
                f"{_format(overall.candidate_auc):>8} {overall.delta_sensitivity:>+7.3f} {overall.delta_specificity:>+7.3f} "
                f"{overall.max_abs_delta_p:>8.4f} {_format(overall.logit_delta_std):>8} "
                f"{_format(overall.logit_delta_std_near_threshold):>8} {overall.near_threshold:>6d}  "
                f"{result.threshold:>9.4f}  {result.path}"
            )
        if result.validation is None:
            click.echo(f"{result.variant.value:<8} {'(no split)':<10} {'':>9} {'':>8} {'':>8} {'':>7} {'':>7} {'':>8} {'':>8} {'':>8} {'':>6}  {result.threshold:>9.4f}  {result.path}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calibration", "calibration_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder whose training images form the representative dataset (and whose validation "
                   "and test images measure drift when --split-file is given).")
@click.option("--split-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Split file from `edgefrac split`; without it the calibration images are drawn from the whole "
                   "folder and no drift is measured.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Folder for the NAME-VARIANT.efm files and NAME-convert-report.json.")
@click.option("--name", help="Base name of the output files [default: the model file's stem].")
@click.option("--variant", "variants", multiple=True, type=click.Choice(VARIANT_CHOICES),
              help="Variant to write; repeat for several [default: int8, float32 and float16]. 'dynamic' "
                   "(dynamic-range) is written only on request: it is slower than float32 for MobileNetV2 on x86 "
                   "and older runtimes cannot load it.")
@click.option("--calibration-size", default=300, show_default=True, type=click.IntRange(min=1),
              help="Number of training images in the representative dataset (stratified by label and region); "
                   "when fewer are available, all are used and a warning is logged.")
@click.option("--output-kind", type=click.Choice([k.value for k in OutputKind]), default=OutputKind.LOGIT.value,
              show_default=True, help="What the int8 model outputs: the logit (the runtime applies the sigmoid) or "
                                      "the sigmoid probability, which int8 limits to 256 levels.")
@click.option("--target-sensitivity", type=FiniteFloatRange(0.0, 1.0, min_open=True),
              help="Sensitivity the re-tuned int8 threshold must keep on validation [default: the training record's].")
@click.option("--threshold", type=FiniteFloatRange(0.0, 1.0),
              help="Decision threshold of the Keras model [default: the training record's].")
@click.option("--scaling", type=click.Choice([s.value for s in ValueScaling]),
              help="Input value scaling of a model without a training record beside it (required then). "
                   "Rejected when the model has a record, because the record states how it was trained.")
@click.option("--resize", type=click.Choice([r.value for r in ResizeMethod]),
              help="Resize filter of a model without a training record beside it [default: bilinear]. "
                   "Rejected when the model has a record.")
@click.option("--max-drift", type=FiniteFloatRange(0.0, 1.0),
              help="Exit with code 4 when more than this fraction of validation decisions flip between the Keras "
                   "model and the int8 model (files are still written). Needs --split-file and the int8 variant.")
@click.option("--weight-rounding/--no-weight-rounding", default=True, show_default=True,
              help="After calibration, re-round int8 convolution and dense weights to minimize each layer's output "
                   "error on representative images instead of each weight's own error.")
@click.option("--range-tuning/--no-range-tuning", default=True, show_default=True,
              help="After calibration, narrow int8 activation ranges set by rare outliers to the range with the "
                   "smallest quantization error.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="After calibration, remove each int8 convolution's mean output error (measured against a float32 "
                   "conversion) from its bias.")
@click.option("--correction-images", default=64, show_default=True, type=click.IntRange(min=1),
              help="Representative images used by weight rounding, range tuning and bias correction; at most the "
                   "representative dataset's size (a warning is logged when it is capped). "
                   "Range tuning is skipped below 16 images, because a few images understate the ranges.")
@click.option("--seed", default=0, show_default=True, help="Seed for drawing the representative dataset.")
@click.option("--allow-missing-images", is_flag=True,
              help="With --split-file, measure drift on the validation and test images found under --calibration "
                   "when some are missing, instead of exiting with code 2. Each card and the report record how many "
                   "images of each split were missing.")
@click.option("--json", "as_json", is_flag=True, help="Print the conversion report as JSON instead of a table.")
def convert(model, calibration_dir, split_file, output_dir, name, variants, calibration_size, output_kind,
            target_sensitivity, threshold, scaling, resize, max_drift, weight_rounding, range_tuning, bias_correction,
            correction_images, seed, allow_missing_images, as_json):
    """Quantize a Keras MODEL into float32, float16 and full-integer int8 model files.

    The int8 model has int8 input and output, integer ops only and a batch of 1.
    After calibration, its weights are re-rounded, its activation ranges tuned
    and its biases corrected against a float32 conversion. Its threshold is re-tuned on its own outputs
    to keep the target sensitivity, and the drift against the Keras model on
    the validation and test splits is printed and stored in each file's card.

    The model must end in one sigmoid unit. Its preprocessing comes from the
    training record beside it (NAME.json); --scaling and --resize state it
    for a model without one. With --split-file, the split must have the
    training images the record names.

    Exit codes: 0 converted, 1 conversion failed, 2 invalid options (also a
    model, training record or split file that does not fit, or validation or
    test images missing from --calibration), 4 --max-drift exceeded.
    """
    from converters.convert import ConvertOptions, convert_keras_model
    from converters.post_calibration import PostCalibrationOptions
    from converters.tflite import Variant

    chosen_variants = tuple(Variant(v) for v in variants) or ConvertOptions().variants
    _check_max_drift(max_drift, split_file, chosen_variants)
    preprocessing = _preprocessing_options(model, scaling, resize)
    options = ConvertOptions(
        variants=chosen_variants,
        output_kind=OutputKind(output_kind),
        calibration_size=calibration_size,
        seed=seed,
        target_sensitivity=target_sensitivity,
        threshold=threshold,
        preprocessing=preprocessing,
        post_calibration=PostCalibrationOptions(
            weight_rounding=weight_rounding, range_tuning=range_tuning, bias_correction=bias_correction,
            images=correction_images,
        ),
        allow_missing_images=allow_missing_images,
    )
    report = convert_keras_model(
        model, output_dir, split_path=split_file, calibration_dir=calibration_dir, options=options, name=name
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        _print_table(report)
    int8 = report.result(Variant.INT8)
    if max_drift is not None and int8.validation is None:
        raise UsageError(
            f"--max-drift cannot be checked: split file {split_file} has no decodable validation image; "
            "make a split with validation images"
        )
    if max_drift is not None and int8.validation.exceeds(max_drift):
        raise DriftExceededError(
            f"int8 decisions differ from the Keras model on {int8.validation.overall.disagreement:.2%} of validation "
            f"images, over --max-drift {max_drift:.2%}; see {output_dir}"
        )


def _check_max_drift(max_drift, split_file, variants) -> None:
    from converters.tflite import Variant

    if max_drift is not None and (split_file is None or Variant.INT8 not in variants):
        raise UsageError(
            "--max-drift needs --split-file and the int8 variant, because drift is measured only on the "
            "validation split and only for int8; add them or leave out --max-drift"
        )


def _preprocessing_options(model: Path, scaling: str | None, resize: str | None) -> PreprocessConfig | None:
    """Return the preprocessing --scaling and --resize state, or None to use the training record's."""
    from converters.training import model_record_path, read_model_record

    if scaling is None and resize is None:
        return None
    record = read_model_record(model)
    if record is not None and "preprocessing" in record:
        raise UsageError(
            f"--scaling and --resize apply only to a model without a training record, and {model_record_path(model)} "
            f"states its preprocessing ({record['preprocessing'].get('scaling')}, "
            f"{record['preprocessing'].get('resize')}); leave them out"
        )
    if scaling is None:
        raise UsageError(f"--resize needs --scaling for {model}, which has no training record beside it")
    return _preprocessing_from_model(model, ValueScaling(scaling), ResizeMethod(resize or ResizeMethod.BILINEAR.value))


def _preprocessing_from_model(model: Path, scaling: ValueScaling, resize: ResizeMethod) -> PreprocessConfig:
    from converters.tf import keras

    shape = keras.models.load_model(model, compile=False).inputs[0].shape
    return PreprocessConfig(height=int(shape[1]), width=int(shape[2]), channels=int(shape[3]),
                            channel_order="RGB" if int(shape[3]) == 3 else "L", resize=resize, scaling=scaling)
