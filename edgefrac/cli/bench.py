"""``edgefrac bench``: latency, memory and accuracy drift of a model on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from edgefrac.cli import main
from edgefrac.cli.overrides import override_options, overrides_from
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.errors import UsageError
from edgefrac.exitcodes import ExitCode

KERAS_SUFFIXES = (".keras", ".h5")


def _reference_factory(reference: Path, threshold: float | None, threads: int, allow_truncated: bool):
    def make_reference(candidate):
        if reference.suffix.lower() in KERAS_SUFFIXES:
            # TensorFlow is imported only here, for a Keras reference on a dev machine.
            from converters.reference import KerasReference

            return KerasReference(reference, candidate, threshold=threshold, allow_truncated=allow_truncated)
        from edgefrac.bench.accuracy import TFLiteReference

        return TFLiteReference(
            reference, candidate, threshold=threshold, threads=threads, allow_truncated=allow_truncated
        )

    return make_reference


@main.command()
@click.argument("model", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--threads", "threads", type=int, multiple=True,
              help="Interpreter threads; repeat to measure several counts (--threads 1 --threads 2). Default: 1.")
@click.option("--runs", type=int, default=50, show_default=True, help="Measured invoke runs per thread count.")
@click.option("--warmup", type=int, default=5, show_default=True,
              help="Warm-up invoke runs per thread count, timed and shown as their own 'warm-up' row "
                   "(the 'warmup' entry with --json), apart from the measured runs.")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Folder of images for the end-to-end timing (decode, preprocess, invoke). A folder with one "
                   "subfolder per class (or FracAtlas's images/<class>/) is also the labelled set for --reference.")
@click.option("--max-images", type=int,
              help="Score only this many images of --data, evenly spaced over the sorted file list.")
@click.option("--allow-truncated", is_flag=True,
              help="Score truncated images with the missing part grey instead of counting them as failed.")
@click.option("--reference", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Full-precision model to measure drift against: a float .tflite or .efm, or a .keras file "
                   "(needs TensorFlow). Needs a labelled --data folder.")
@click.option("--reference-threshold", type=FiniteFloatRange(0.0, 1.0),
              help="Decision threshold of the reference. Default: its model card or training record; a plain "
                   ".tflite without a card uses this model's card threshold.")
@click.option("--max-drift", type=FiniteFloatRange(0.0, 1.0),
              help="Largest allowed fraction of images whose decision flipped against --reference; "
                   "above it the command exits with code 4.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.option("--report", "report_folder", type=click.Path(path_type=Path, file_okay=False),
              help="Also write report.md, report.json and PNG plots into this folder (needs edgefrac[bench]).")
@override_options("threshold", "scaling", "resize", "output_kind", "test_time_augmentation")
def bench(
    model: Path,
    threads: tuple[int, ...],
    runs: int,
    warmup: int,
    data: Path | None,
    max_images: int | None,
    allow_truncated: bool,
    reference: Path | None,
    reference_threshold: float | None,
    max_drift: float | None,
    as_json: bool,
    report_folder: Path | None,
    threshold: float | None,
    scaling: str | None,
    resize: str | None,
    output_kind: str | None,
    test_time_augmentation: str | None,
) -> None:
    """Measure MODEL's latency, memory use and, with --reference, its accuracy drift.

    Invoke-only latency follows TFLite's benchmark_model: initialisation, first
    inference, warm-up runs and measured runs, for each --threads value. With
    --data, every image is also scored end to end. A warning goes to stderr
    when the CPU governor is not 'performance' or the machine looks busy.

    --threshold, --scaling, --resize, --output-kind and
    --test-time-augmentation replace the model card's values; a plain .tflite
    has no card and needs them when it was trained otherwise. Invoke-only
    latency is per invocation; with 'horizontal_flip' test-time augmentation
    each image takes two, and the end-to-end figures include both.

    Exit codes: 0 done; 1 the model or runtime failed; 2 invalid options;
    4 the fraction of flipped decisions exceeded --max-drift (the model is
    worse, not broken).
    """
    from edgefrac.bench import report as report_output
    from edgefrac.bench.runner import BenchmarkConfig, run_benchmark

    if max_drift is not None and reference is None:
        raise UsageError("--max-drift needs --reference MODEL and --data DIR to measure drift against")
    if reference is not None and data is None:
        raise UsageError("--reference needs --data DIR, a labelled folder with one subfolder per class")
    config = BenchmarkConfig(
        model=model,
        threads=threads or (1,),
        runs=runs,
        warmup=warmup,
        data=data,
        max_images=max_images,
        allow_truncated=allow_truncated,
        overrides=overrides_from(
            threshold=threshold,
            scaling=scaling,
            resize=resize,
            output_kind=output_kind,
            test_time_augmentation=test_time_augmentation,
        ),
    )
    make_reference = None
    if reference is not None:
        make_reference = _reference_factory(reference, reference_threshold, config.threads[0], allow_truncated)
    result = run_benchmark(config, make_reference=make_reference)

    click.echo(report_output.to_json(result) if as_json else report_output.to_text(result), nl=False)
    if report_folder is not None:
        path = report_output.write_markdown_report(result, report_folder)
        click.echo(f"wrote {path}", err=True)
    if max_drift is not None and result.drift.report.exceeds(max_drift):
        overall = result.drift.report.overall
        click.echo(
            f"Error: {overall.flipped} of {overall.images} decisions flipped ({overall.disagreement:.2%}), "
            f"more than --max-drift {max_drift:.2%}",
            err=True,
        )
        raise click.exceptions.Exit(ExitCode.DRIFT_EXCEEDED)
