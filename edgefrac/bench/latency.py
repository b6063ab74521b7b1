"""Time model initialisation, invocation and whole-image scoring on this machine.

The phases follow TFLite's benchmark_model: initialisation (read and verify
the file, create the interpreter, allocate tensors), the first inference,
warm-up runs, then measured runs. Each phase is reported on its own because
the first calls pay for lazy set-up (XNNPACK weight packing, page faults).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgefrac import quantization
from edgefrac.bench.stats import LatencyStats, latency_stats
from edgefrac.classifier import FractureClassifier
from edgefrac.errors import InputError, UsageError

logger = logging.getLogger(__name__)

INPUT_SEED = 20240601
"""Seed of the synthetic input used for invoke-only timing, so runs are comparable."""


@dataclasses.dataclass(frozen=True)
class InvokeResult:
    """Invoke-only timing of one model at one thread count; samples in milliseconds."""

    threads: int
    init_ms: float
    first_inference_ms: float
    warmup: LatencyStats | None
    measured: LatencyStats
    samples_ms: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "warmup": self.warmup.to_dict() if self.warmup else None,
            "measured": self.measured.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class ScoredImage:
    """One image of an end-to-end run: its probability, or the error that stopped it."""

    image_id: str
    path: Path
    probability: float | None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class EndToEndResult:
    """Decode + preprocess + invoke over a folder at one thread count.

    ``per_image`` covers the images that scored. ``wall_seconds`` covers
    every file, failed ones included, because a clinic waits for those too.
    """

    threads: int
    images: int
    failed: int
    wall_seconds: float
    per_image: LatencyStats | None
    samples_ms: tuple[float, ...]

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "images": self.images,
            "failed": self.failed,
            "wall_seconds": self.wall_seconds,
            "images_per_second": self.images_per_second,
            "per_image": self.per_image.to_dict() if self.per_image else None,
        }


def load_classifier(path: str | os.PathLike, threads: int, **options) -> tuple[FractureClassifier, float]:
    """Load, verify and allocate a model; return the classifier and the seconds it took."""
    started = time.perf_counter()
    classifier = FractureClassifier.from_path(path, threads=threads, **options)
    return classifier, time.perf_counter() - started


def synthetic_input(classifier: FractureClassifier, seed: int = INPUT_SEED) -> np.ndarray:
    """Return a fixed random float32 input spread over the model's input value range."""
    config = classifier.preprocessing
    low, high = config.scaling.bounds
    rng = np.random.default_rng(seed)
    values = rng.uniform(low, high, (1, config.height, config.width, config.channels))
    return values.astype(np.float32)


def _input_tensor(classifier: FractureClassifier, model_input: np.ndarray) -> tuple[int, np.ndarray]:
    detail = classifier.interpreter.get_input_details()[0]
    tensor = classifier.input_tensor
    if tensor.is_quantized:
        data = quantization.quantize(model_input, tensor.scale, tensor.zero_point, np.dtype(detail["dtype"]))
    else:
        data = model_input.astype(np.dtype(detail["dtype"]))
    return detail["index"], data


def benchmark_invoke(
    classifier: FractureClassifier,
    *,
    threads: int,
    init_seconds: float,
    runs: int,
    warmup: int,
    model_input: np.ndarray | None = None,
) -> InvokeResult:
    """Time ``Interpreter.invoke`` alone: the input tensor is set once, outside the timed calls."""
    if runs < 1:
        raise UsageError(f"invalid --runs {runs}: expected 1 or more")
    if warmup < 0:
        raise UsageError(f"invalid --warmup {warmup}: expected 0 or more")
    if model_input is None:
        model_input = synthetic_input(classifier)
    index, data = _input_tensor(classifier, model_input)
    interpreter = classifier.interpreter
    interpreter.set_tensor(index, data)

    first = _time_invokes(interpreter, 1)
    warmup_samples = _time_invokes(interpreter, warmup)
    samples = _time_invokes(interpreter, runs)
    return InvokeResult(
        threads=threads,
        init_ms=init_seconds * 1000.0,
        first_inference_ms=first[0] * 1000.0,
        warmup=latency_stats(warmup_samples) if warmup_samples else None,
        measured=latency_stats(samples),
        samples_ms=tuple(s * 1000.0 for s in samples),
    )


def _time_invokes(interpreter, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        interpreter.invoke()
        samples.append(time.perf_counter() - started)
    return samples


def benchmark_end_to_end(
    classifier: FractureClassifier, images: Sequence[tuple[str, Path]], *, threads: int
) -> tuple[EndToEndResult, list[ScoredImage]]:
    """Score each ``(image_id, path)`` from its file and time each one; failures are counted, not raised."""
    if not images:
        raise UsageError("no images to score end to end; pass --data DIR with image files")
    scored: list[ScoredImage] = []
    samples: list[float] = []
    started = time.perf_counter()
    for image_id, path in images:
        image_started = time.perf_counter()
        try:
            prediction = classifier.predict_file(path)
        except InputError as error:
            logger.debug("end-to-end run left out %s: %s", path, error)
            scored.append(ScoredImage(image_id, Path(path), None, str(error)))
            continue
        samples.append(time.perf_counter() - image_started)
        scored.append(ScoredImage(image_id, Path(path), prediction.probability))
    wall = time.perf_counter() - started
    failed = sum(s.probability is None for s in scored)
    if failed:
        logger.info("%d of %d images failed to decode and were left out of the statistics", failed, len(images))
    result = EndToEndResult(
        threads=threads,
        images=len(samples),
        failed=failed,
        wall_seconds=wall,
        per_image=latency_stats(samples) if samples else None,
        samples_ms=tuple(s * 1000.0 for s in samples),
    )
    return result, scored


def peak_rss_bytes(status: Path = Path("/proc/self/status")) -> int:
    """Return this process's peak resident set size so far, in bytes.

    Linux's ``VmHWM`` is read first because ``ru_maxrss`` carries over fork
    and exec, so a process started by a large parent would report the
    parent's peak. Elsewhere ``getrusage`` gives ``ru_maxrss``.
    """
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024
