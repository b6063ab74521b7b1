"""Collect every figure of the suite: per-variant workers, cold starts and ``edgefrac infer`` runs."""

from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path

from edgefrac import metrics
from suite import variants as names
from suite.prepare import ModelFiles
from suite.processes import BENCHMARKS, ChildRun, child_environment, run_child

logger = logging.getLogger(__name__)

TFLITE_RUNTIME_PYTHON = BENCHMARKS / ".venv-tflite-runtime" / "bin" / "python"
EDGEFRAC_CLI = "from edgefrac.cli import main; main()"


def variant_python(variant: str) -> tuple[str, dict[str, str]]:
    """Return the interpreter and environment a variant runs under."""
    if variant == names.TFLITE_RUNTIME_INT8:
        return str(TFLITE_RUNTIME_PYTHON), child_environment({"EDGEFRAC_RUNTIME": "tflite_runtime"})
    if variant in names.TFLITE_VARIANTS:
        return sys.executable, child_environment({"EDGEFRAC_RUNTIME": "litert"})
    return sys.executable, child_environment()


def run_worker(variant: str, model: ModelFiles, threads: int, runs: int, warmup: int,
               images_file: Path | None, work: Path) -> dict:
    """Measure one variant at one thread count in a fresh process; return its JSON or an error entry."""
    python, environment = variant_python(variant)
    if variant == names.TFLITE_RUNTIME_INT8 and not TFLITE_RUNTIME_PYTHON.exists():
        return {"error": "benchmarks/.venv-tflite-runtime is missing; run benchmarks/setup_tflite_runtime.sh"}
    output = work / f"{model.name}-{variant}-{threads}.json"
    command = [
        python, "-m", "suite.worker", "--variant", variant, "--model", str(model.files[variant]),
        "--preprocessing", json.dumps(model.preprocessing.to_dict()), "--threads", str(threads),
        "--runs", str(runs), "--warmup", str(warmup), "--output", str(output),
        "--test-time-augmentation", model.augmentation.value,
    ]
    if images_file is not None:
        command += ["--images", str(images_file)]
    logger.info("measuring %s %s at %d thread(s)", model.name, variant, threads)
    child = run_child(command, environment=environment)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        logger.warning("%s %s failed: %s", model.name, variant, last)
        return {"error": last}
    return json.loads(output.read_text())


def one_image_command(variant: str, model: ModelFiles, image: Path) -> tuple[list[str], dict[str, str]]:
    """Return the one-image command of a variant: ``edgefrac infer`` for TFLite, a small script otherwise.

    Both score the image in the model's views, and ``edgefrac infer`` reads them from the card.
    """
    python, environment = variant_python(variant)
    if variant in names.TFLITE_VARIANTS:
        return [python, "-c", EDGEFRAC_CLI, "infer", "--model", str(model.files[variant]), str(image)], environment
    return [
        python, str(BENCHMARKS / "suite" / "one_image.py"), "--variant", variant,
        "--model", str(model.files[variant]), "--preprocessing", json.dumps(model.preprocessing.to_dict()),
        "--test-time-augmentation", model.augmentation.value, str(image),
    ], environment


def cold_start(command: list[str], environment: dict[str, str], repeats: int) -> dict:
    """Return the median wall time and max peak RSS over ``repeats`` runs, after one untimed run.

    The untimed run fills the page cache, so the figure is a warm-disk cold
    start: a new process, but model and library files already in memory.
    """
    run_child(command, environment=environment)
    runs: list[ChildRun] = [run_child(command, environment=environment) for _ in range(repeats)]
    failed = [run for run in runs if run.returncode != 0]
    if failed:
        return {"error": (failed[0].stderr.strip().splitlines() or ["no output"])[-1]}
    return {
        "seconds": statistics.median(run.seconds for run in runs),
        "all_seconds": [run.seconds for run in runs],
        "peak_rss_bytes": max(run.peak_rss_bytes for run in runs),
    }


def startup_profile(repeats: int) -> dict:
    """Return median seconds of the fixed parts of a cold start: Python alone, and Python with each import."""
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import edgefrac.classifier + LiteRT": [
            sys.executable, "-c", "import edgefrac.classifier, edgefrac.runtime as r; r.resolve_runtime()"],
        "import edgefrac.cli (click and commands)": [sys.executable, "-c", "import edgefrac.cli"],
        "import tensorflow": [sys.executable, "-c", "import tensorflow"],
    }
    profile = {}
    for name, command in commands.items():
        run_child(command)
        profile[name] = statistics.median(run_child(command).seconds for _ in range(repeats))
    return profile


def infer_folder(model_file: Path, folder: Path) -> dict:
    """Time ``edgefrac infer`` over a folder in one process: files per second and peak RSS."""
    python, environment = variant_python(names.TFLITE_INT8)
    command = [python, "-c", EDGEFRAC_CLI, "infer", "--model", str(model_file), "--json", str(folder)]
    child = run_child(command, environment=environment)
    if child.returncode not in (0, 3):
        return {"error": (child.stderr.strip().splitlines() or ["no output"])[-1]}
    files = sum(1 for path in folder.rglob("*") if path.is_file() and path.suffix.lower() == ".jpg")
    return {
        "files": files,
        "seconds": child.seconds,
        "images_per_second": files / child.seconds,
        "peak_rss_bytes": child.peak_rss_bytes,
        "exit_code": child.returncode,
    }


def accuracy(probabilities: dict[str, float], labels: dict[str, int], threshold: float) -> dict:
    """Return AUC, sensitivity and specificity at ``threshold`` over the images that scored."""
    ids = [image_id for image_id in labels if image_id in probabilities]
    scores = [probabilities[image_id] for image_id in ids]
    truth = [labels[image_id] for image_id in ids]
    confusion = metrics.confusion(scores, truth, threshold)
    return {
        "images": len(ids),
        "threshold": threshold,
        "auc": metrics.roc_auc(scores, truth),
        "sensitivity": confusion.sensitivity,
        "specificity": confusion.specificity,
    }
