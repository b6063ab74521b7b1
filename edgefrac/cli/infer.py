"""``edgefrac infer``: score radiograph files, folders or glob patterns with a model."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import signal
import sys
from pathlib import Path

import click

from edgefrac.batch import ScoreRecord, Status, Summary, score_files
from edgefrac.card import DecisionThreshold
from edgefrac.classifier import FractureClassifier, Overrides
from edgefrac.cli import echo_document, main
from edgefrac.cli.edgetpu import device_delegates, device_option
from edgefrac.cli.overrides import OPTIONS, overrides_from
from edgefrac.defaults import default_model_path
from edgefrac.exitcodes import ExitCode
from edgefrac.images import DEFAULT_MAX_PIXELS, display_path
from edgefrac.results import AuditLog, CsvResults, json_document
from edgefrac.runtime import resolve_runtime
from edgefrac.tta import TestTimeAugmentation

RUNTIME_CHOICES = ("litert", "tflite_runtime", "tensorflow")

EXIT_CODES_HELP = """\b
Exit codes:
  0  every input was scored (or was already in --csv); an existing
     folder with no image or DICOM files also exits 0
  1  runtime failure: the model, the interpreter or an output file
     cannot be used (a full disk included)
  2  usage error: invalid option, a target that does not exist, or
     a glob pattern that matches nothing
  3  the run finished, but some inputs could not be scored; their
     rows give the reason
  130  interrupted (Ctrl-C); the rows written to --csv are kept, and
     running the same command again resumes
  141  the reader of stdout went away (a broken pipe, as with | head)
"""


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """The options that choose a model and how it runs, shared by the commands that score images."""

    model: Path | None = None
    threads: int | None = None
    runtime: str | None = None
    overrides: Overrides = Overrides()
    allow_truncated: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def model_path(self) -> Path:
        return self.model if self.model is not None else default_model_path()


def classifier_options(command):
    """Add the model and preprocessing options to ``command`` as one ``settings`` argument."""
    options = [
        click.option(
            "--model",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Model file (.efm, or a plain .tflite). Default: the model shipped with edgefrac.",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            help="Interpreter threads. Default: the number of CPU cores this process may use.",
        ),
        click.option(
            "--runtime",
            "runtime_name",
            type=click.Choice(RUNTIME_CHOICES),
            help="TFLite interpreter package. Default: the first installed of litert, tflite_runtime, tensorflow.",
        ),
        OPTIONS["threshold"],
        OPTIONS["scaling"],
        OPTIONS["resize"],
        click.option("--height", type=click.IntRange(min=1), help="Model input height in pixels. Default: the card's."),
        click.option("--width", type=click.IntRange(min=1), help="Model input width in pixels. Default: the card's."),
        OPTIONS["output_kind"],
        OPTIONS["test_time_augmentation"],
        click.option(
            "--allow-truncated",
            is_flag=True,
            help="Score truncated JPEG/PNG files with the missing part grey, instead of reporting an error.",
        ),
        click.option(
            "--max-pixels",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_PIXELS,
            show_default=True,
            help="Largest image, in pixels, to decode (decompression-bomb guard).",
        ),
    ]

    @functools.wraps(command)
    def wrapped(**kwargs):
        settings = ClassifierSettings(
            model=kwargs.pop("model"),
            threads=kwargs.pop("threads"),
            runtime=kwargs.pop("runtime_name"),
            overrides=overrides_from(
                height=kwargs.pop("height"),
                width=kwargs.pop("width"),
                resize=kwargs.pop("resize"),
                scaling=kwargs.pop("scaling"),
                threshold=kwargs.pop("threshold"),
                output_kind=kwargs.pop("output_kind"),
                test_time_augmentation=kwargs.pop("test_time_augmentation"),
            ),
            allow_truncated=kwargs.pop("allow_truncated"),
            max_pixels=kwargs.pop("max_pixels"),
        )
        return command(settings=settings, **kwargs)

    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def build_classifier(settings: ClassifierSettings, *, delegates: tuple = ()) -> FractureClassifier:
    """Load the model ``settings`` names and create its interpreter.

    Commands that add hardware delegates pass them as ``delegates``.
    """
    runtime = resolve_runtime(settings.runtime)
    return FractureClassifier.from_path(
        settings.model_path,
        threads=settings.threads,
        delegates=delegates,
        overrides=settings.overrides,
        allow_truncated=settings.allow_truncated,
        max_pixels=settings.max_pixels,
        runtime=runtime,
    )


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("targets", nargs=-1, required=True)
@classifier_options
@click.option("--json", "as_json", is_flag=True, help="Write one JSON document to stdout instead of the table.")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one row per file to this CSV. Running again with the same file skips files already scored "
    "with the same content (path and SHA-256), and scores changed files and files with an error row again.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append one JSON line per file: time, input SHA-256, model SHA-256, result.",
)
@device_option
def infer(
    targets, settings: ClassifierSettings, as_json: bool, csv_path: Path | None, audit_log: Path | None, device: str
):
    """Score radiographs for fractures.

    TARGETS are image or DICOM files, folders (searched recursively) or glob
    patterns such as 'scans/**/*.jpg'. Prints a table of file, fracture
    probability and label on stdout and a summary on stderr. A file that
    cannot be read gets a row with the reason, and the run goes on.
    """
    _report_file_size_limit_as_error()
    summary = Summary()
    try:
        with _interrupt_between_files() as interrupted:
            _infer(targets, settings, as_json, csv_path, audit_log, device, summary, interrupted)
    except KeyboardInterrupt:
        resume = (
            f"; run the same command again to resume, and files in {csv_path} are skipped"
            if csv_path is not None
            else "; pass --csv PATH to make a run resumable"
        )
        click.echo(
            f"interrupted: scored {summary.scored} file(s), {summary.failed} failed{resume}",
            err=True,
        )
        sys.exit(ExitCode.INTERRUPTED)


def _infer(
    targets,
    settings: ClassifierSettings,
    as_json: bool,
    csv_path: Path | None,
    audit_log: Path | None,
    device: str,
    summary: Summary,
    interrupted: _InterruptFlag,
) -> None:
    from edgefrac.targets import UnlistableFolder, expand_targets

    unlistable: list[UnlistableFolder] = []
    files = expand_targets(targets, unlistable)
    classifier = build_classifier(settings, delegates=device_delegates(device, settings.runtime))
    model = classifier.model
    records: list[ScoreRecord] = []
    folder_errors = [
        ScoreRecord(
            str(folder.path),
            Status.ERROR,
            classifier.threshold,
            error=f"cannot list this folder ({folder.reason}), so its files were not scored",
        )
        for folder in unlistable
    ]

    with contextlib.ExitStack() as stack:
        table = None
        if csv_path is not None:
            table = stack.enter_context(
                CsvResults(
                    csv_path,
                    model_sha256=model.sha256,
                    threshold=classifier.threshold,
                    preprocessing=preprocessing_label(classifier),
                )
            )
        audit = None
        if audit_log is not None:
            audit = stack.enter_context(AuditLog(audit_log, model_sha256=model.sha256))

        pending = files if table is None else table.select_pending(files)
        summary.skipped = len(files) - len(pending)
        interrupted.raise_if_set()
        scored = itertools.chain(
            folder_errors, score_files(classifier, pending, hash_inputs=audit is not None or table is not None)
        )
        rows = None if as_json else TableWriter([*(Path(record.path) for record in folder_errors), *pending])
        progress = None if rows is not None and rows.on_terminal else _progress_bar(stack, len(pending))
        for record in scored:
            if table is not None:
                table.write(record)
            if audit is not None:
                audit.write(record)
            summary.add(record)
            records.append(record)
            if rows is not None:
                rows.write(record)
            if progress is not None and record not in folder_errors:
                progress.update(1)
            interrupted.raise_if_set()

    if as_json:
        document = json_document(
            records,
            model_path=os.fspath(model.path),
            model_sha256=model.sha256,
            model_name=classifier.card.name,
            runtime=classifier.runtime.info.describe(),
            summary={
                **dataclasses.asdict(summary),
                "threshold": classifier.threshold,
                "threshold_chosen_on": classifier.card.threshold.chosen_on,
                "preprocessing": preprocessing_label(classifier),
            },
        )
        echo_document(json.dumps(document, indent=2))
    truncated = f" ({summary.truncated} from truncated files)" if summary.truncated else ""
    click.echo(
        f"scored {summary.scored}{truncated}, fractured {summary.fractured}, failed {summary.failed}, "
        f"skipped {summary.skipped} (model {classifier.card.name}, sha256 {model.sha256[:12]}); "
        f"{describe_operating_point(classifier.card.threshold)}",
        err=True,
    )
    if summary.failed:
        sys.exit(ExitCode.SOME_INPUTS_FAILED)


def preprocessing_label(classifier: FractureClassifier) -> str:
    """Describe the input size, channel order, resize, scaling, output kind and views the classifier runs with.

    The views are named only when there are more than one, so a one-view label
    reads as it did before test-time augmentation existed.
    """
    config = classifier.preprocessing
    label = (
        f"{config.width}x{config.height} {config.channel_order} {config.resize.value} {config.scaling.value} "
        f"{classifier.card.output_kind.value}"
    )
    augmentation = classifier.card.test_time_augmentation
    return label if augmentation is TestTimeAugmentation.NONE else f"{label} {augmentation.value}"


class _InterruptFlag:
    """Records a Ctrl-C that arrived while a file was being scored."""

    def __init__(self) -> None:
        self.pending = False

    def raise_if_set(self) -> None:
        if self.pending:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupt_between_files():
    """Defer Ctrl-C to the end of the file being scored, so the CSV, the table and the summary count the same files.

    A second Ctrl-C before that stops at once, for a file whose decode takes too long.
    """
    flag = _InterruptFlag()

    def handle(signum, frame):
        if flag.pending:
            raise KeyboardInterrupt
        flag.pending = True

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        # Ignored (a background job) or handled by the caller: leave it so.
        yield flag
        return
    try:
        previous = signal.signal(signal.SIGINT, handle)
    except ValueError:  # not the main thread: Ctrl-C cannot reach this code anyway
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def describe_operating_point(threshold: DecisionThreshold) -> str:
    """Describe the decision threshold and, when the card records them, its sensitivity and specificity.

    A threshold chosen for high sensitivity flags many images that are not
    fractured, so the text states that a "fractured" label calls for a re-check.
    """
    notice = "a fractured label means re-check the image, not a diagnosis"
    if threshold.sensitivity is None or threshold.specificity is None:
        return f"threshold {threshold.value:.3g} ({threshold.chosen_on}); {notice}"
    return (
        f"threshold {threshold.value:.3g}: sensitivity {threshold.sensitivity:.2f}, specificity "
        f"{threshold.specificity:.2f} on {threshold.chosen_on}; {notice}"
    )


def _report_file_size_limit_as_error() -> None:
    """Make a file-size limit (``ulimit -f``) fail a write with EFBIG instead of killing the process."""
    if hasattr(signal, "SIGXFSZ"):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _progress_bar(stack: contextlib.ExitStack, length: int):
    stream = click.get_text_stream("stderr")
    if length < 2 or not stream.isatty():
        return None
    return stack.enter_context(click.progressbar(length=length, label="Scoring", file=stream))


class TableWriter:
    """The results table on stdout: the header at once, then one row per file as soon as it is scored.

    Each row is flushed, so a long run shows its progress and a killed run
    leaves the rows printed so far. The file column is as wide as the longest
    path to be scored.
    """

    def __init__(self, paths: list[Path]):
        self.width = max([len("file"), *(len(display_path(path)) for path in paths)])
        stdout = click.get_text_stream("stdout")
        self.on_terminal = stdout.isatty()
        click.echo(f"{'file':<{self.width}}  {'probability':>11}  label")

    def write(self, record: ScoreRecord) -> None:
        name = display_path(record.path)
        if record.status is Status.OK:
            click.echo(f"{name:<{self.width}}  {record.probability:>11.4f}  {record.label}")
        elif record.status is Status.TRUNCATED:
            click.echo(f"{name:<{self.width}}  {record.probability:>11.4f}  {record.label} (truncated file)")
        else:
            click.echo(f"{name:<{self.width}}  {'-':>11}  error: {display_path(record.error or '')}")
