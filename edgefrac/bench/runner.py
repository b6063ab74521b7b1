"""Run every measurement of ``edgefrac bench`` and collect them in one report."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefrac.bench.accuracy import DriftResult, ReferenceScorer, measure_drift
from edgefrac.bench.environment import Environment, collect_environment
from edgefrac.bench.latency import (
    EndToEndResult,
    InvokeResult,
    ScoredImage,
    benchmark_end_to_end,
    benchmark_invoke,
    load_classifier,
    peak_rss_bytes,
)
from edgefrac.classifier import FractureClassifier, Overrides
from edgefrac.dataset import LabelledImage, image_files, read_labelled_folder
from edgefrac.errors import UsageError
from edgefrac.runtime import resolve_runtime

logger = logging.getLogger(__name__)

REPORT_FORMAT = "edgefrac-bench/1"


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Settings of one benchmark run; each field is one flag of ``edgefrac bench``."""

    model: Path
    threads: tuple[int, ...] = (1,)
    runs: int = 50
    warmup: int = 5
    data: Path | None = None
    max_images: int | None = None
    allow_truncated: bool = False
    overrides: Overrides = Overrides()

    def __post_init__(self) -> None:
        if not self.threads or any(t < 1 for t in self.threads):
            raise UsageError(f"invalid --threads {list(self.threads)}: expected one or more counts of 1 or more")
        if self.runs < 1:
            raise UsageError(f"invalid --runs {self.runs}: expected 1 or more")
        if self.warmup < 0:
            raise UsageError(f"invalid --warmup {self.warmup}: expected 0 or more")
        if self.max_images is not None and self.max_images < 1:
            raise UsageError(f"invalid --max-images {self.max_images}: expected 1 or more")


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """The benchmarked model file."""

    path: str
    name: str
    file_bytes: int
    tflite_bytes: int
    sha256: str
    input_dtype: str
    output_dtype: str
    threshold: float
    test_time_augmentation: str = "none"
    """Views scored per image end to end; invoke-only latency is per invocation (one view)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BenchmarkReport:
    """Everything one ``edgefrac bench`` run measured.

    ``peak_rss_bytes`` is read after the candidate's runs and before a
    reference model is loaded, so it covers the candidate alone (plus the
    Python interpreter and imported packages).
    """

    model: ModelSummary
    environment: Environment
    invoke: tuple[InvokeResult, ...]
    end_to_end: tuple[EndToEndResult, ...]
    peak_rss_bytes: int
    drift: DriftResult | None
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        drift_data = None
        if self.drift is not None:
            drift_data = {
                "reference": dataclasses.asdict(self.drift.reference),
                **self.drift.report.to_dict(),
            }
        return {
            "format": REPORT_FORMAT,
            "model": self.model.to_dict(),
            "environment": self.environment.to_dict(),
            "invoke": [result.to_dict() for result in self.invoke],
            "end_to_end": [result.to_dict() for result in self.end_to_end],
            "peak_rss_bytes": self.peak_rss_bytes,
            "drift": drift_data,
            "warnings": list(self.warnings),
        }


def select_images(config: BenchmarkConfig) -> tuple[list[LabelledImage] | None, list[tuple[str, Path]]]:
    """Return the labelled images (None for an unlabelled folder) and the ``(id, path)`` pairs to score.

    ``max_images`` keeps an evenly spaced subset of the path-sorted list, so
    both classes stay represented and the subset is the same on every run.
    """
    if config.data is None:
        return None, []
    try:
        labelled = read_labelled_folder(config.data)
    except UsageError as error:
        logger.info("%s is not a labelled folder (%s); timing its images without labels", config.data, error)
        labelled = None
    if labelled is not None:
        labelled = sorted(labelled, key=lambda image: str(image.path))
        labelled = _evenly_spaced(labelled, config.max_images)
        return labelled, [(image.image_id, image.path) for image in labelled]
    paths = _evenly_spaced(image_files(Path(config.data)), config.max_images)
    if not paths:
        raise UsageError(f"no image files found under {config.data}; pass --data DIR with images")
    return None, [(str(path.relative_to(config.data)), path) for path in paths]


def _evenly_spaced(items: list, count: int | None) -> list:
    if count is None or count >= len(items):
        return items
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def run_benchmark(
    config: BenchmarkConfig,
    *,
    make_reference: Callable[[FractureClassifier], ReferenceScorer] | None = None,
) -> BenchmarkReport:
    """Measure the model at each thread count, then, when ``make_reference`` is given, the drift.

    The environment is read first, so its load average does not count this run.

    ``make_reference`` receives the candidate classifier (for its card's
    preprocessing and threshold) and returns the reference scorer.
    """
    environment = collect_environment(resolve_runtime().info)
    for warning in environment.warnings():
        logger.warning("%s", warning)
    labelled, images = select_images(config)
    if make_reference is not None and labelled is None:
        raise UsageError("--reference needs --data DIR with one subfolder per class (fractured and not)")

    invoke_results: list[InvokeResult] = []
    end_to_end_results: list[EndToEndResult] = []
    first_scores: list[ScoredImage] | None = None
    classifier = None
    for threads in config.threads:
        classifier, init_seconds = load_classifier(
            config.model, threads, allow_truncated=config.allow_truncated, overrides=config.overrides
        )
        logger.info("timing %s at %d thread(s)", config.model, threads)
        invoke_results.append(
            benchmark_invoke(
                classifier, threads=threads, init_seconds=init_seconds, runs=config.runs, warmup=config.warmup
            )
        )
        if images:
            result, scores = benchmark_end_to_end(classifier, images, threads=threads)
            end_to_end_results.append(result)
            first_scores = first_scores if first_scores is not None else scores
    peak = peak_rss_bytes()
    model = _model_summary(config.model, classifier)

    drift_result = None
    if make_reference is not None:
        reference = make_reference(classifier)
        drift_result = measure_drift(labelled, first_scores or [], classifier.threshold, reference)

    return BenchmarkReport(
        model=model,
        environment=environment,
        invoke=tuple(invoke_results),
        end_to_end=tuple(end_to_end_results),
        peak_rss_bytes=peak,
        drift=drift_result,
        warnings=tuple(environment.warnings()),
    )


def _model_summary(path: Path, classifier: FractureClassifier) -> ModelSummary:
    return ModelSummary(
        path=str(path),
        name=classifier.card.name,
        file_bytes=Path(path).stat().st_size,
        tflite_bytes=len(classifier.model.tflite),
        sha256=classifier.model.sha256,
        input_dtype=classifier.input_tensor.dtype,
        output_dtype=classifier.output_tensor.dtype,
        threshold=classifier.threshold,
        test_time_augmentation=classifier.card.test_time_augmentation.value,
    )
