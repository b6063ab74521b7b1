"""Measure one variant at one thread count in a fresh process and write the figures as JSON.

A fresh process per measurement gives each variant its own peak RSS and lets
TensorFlow take the thread count, which it fixes when it first runs an op.
Run as ``python -m suite.worker`` with ``benchmarks/`` and the repository root
on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgefrac.bench.latency import peak_rss_bytes
from edgefrac.bench.stats import latency_stats
from edgefrac.errors import InputError
from edgefrac.preprocessing import PreprocessConfig
from edgefrac.tta import TestTimeAugmentation

INPUT_SEED = 20240601


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--preprocessing", required=True, help="PreprocessConfig as JSON")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--test-time-augmentation", choices=[member.value for member in TestTimeAugmentation],
                        default=TestTimeAugmentation.NONE.value,
                        help="Views each file of --images is scored in; the invoke runs use one view")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=Path, help="JSON list of [image_id, path] to score end to end")
    parser.add_argument("--output", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = _arguments(argv)
    from suite.variants import make_variant

    config = PreprocessConfig.from_dict(json.loads(arguments.preprocessing))
    started = time.perf_counter()
    variant = make_variant(arguments.variant, arguments.model, config, arguments.threads,
                           TestTimeAugmentation(arguments.test_time_augmentation))
    load_seconds = time.perf_counter() - started

    low, high = variant.config.scaling.bounds
    rng = np.random.default_rng(INPUT_SEED)
    model_input = rng.uniform(low, high, (variant.config.height, variant.config.width, 3)).astype(np.float32)
    samples = []
    for index in range(1 + arguments.warmup + arguments.runs):
        started = time.perf_counter()
        variant.invoke(model_input)
        samples.append(time.perf_counter() - started)
    result = {
        "variant": arguments.variant,
        "threads": arguments.threads,
        "load_ms": load_seconds * 1000.0,
        "first_invoke_ms": samples[0] * 1000.0,
        "invoke": latency_stats(samples[1 + arguments.warmup:]).to_dict(),
    }

    if arguments.images:
        images = json.loads(arguments.images.read_text())
        probabilities, failed = {}, {}
        variant.stages.seconds.clear()
        started = time.perf_counter()
        for image_id, path in images:
            try:
                probabilities[image_id] = variant.score_file(Path(path))
            except (InputError, OSError, ValueError) as error:
                failed[image_id] = f"{type(error).__name__}: {error}"
        wall = time.perf_counter() - started
        result["end_to_end"] = {
            "images": len(probabilities),
            "failed": len(failed),
            "wall_seconds": wall,
            "images_per_second": len(images) / wall if wall > 0 else 0.0,
            "stage_seconds": variant.stages.seconds,
        }
        result["probabilities"] = probabilities
        result["failed"] = failed
    result["peak_rss_bytes"] = peak_rss_bytes()
    arguments.output.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
