"""Run the side-by-side benchmark suite and write benchmarks/RESULTS.md and benchmarks/results.json.

    python benchmarks/run_suite.py --data ../shared/fracatlas \
        --cnn models/cnn.keras --mobilenet models/mobilenetv2.keras \
        [--cnn-int8 FILE.efm] [--mobilenet-int8 FILE.efm]

Every variant scores the same image subset: ``--images`` files evenly spaced
over the test split of ``--split`` (files that decode fully), or over the
whole folder when there is no split file. Each file is scored in the views
of the test-time augmentation that the model's training record names.
Needs the ``convert`` extra, ``benchmarks/requirements-onnx.txt`` and, for
the tflite-runtime variant, ``benchmarks/setup_tflite_runtime.sh``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from edgefrac.bench.environment import collect_environment  # noqa: E402
from edgefrac.dataset import read_labelled_folder  # noqa: E402
from edgefrac.runtime import resolve_runtime  # noqa: E402
from suite import measure, results  # noqa: E402
from suite import variants as names  # noqa: E402
from suite.macs import cpu_flags_summary, int8_peak, layer_macs  # noqa: E402

logger = logging.getLogger("benchmarks")

MODELS = (("cnn", "cnn"), ("mobilenetv2", "mobilenetv2"))


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="FracAtlas folder (images/<class>/, dataset.csv)")
    parser.add_argument("--split", type=Path, default=Path("models/fracatlas-split.json"))
    parser.add_argument("--cnn", type=Path, help="Custom CNN .keras file (with its .json training record)")
    parser.add_argument("--mobilenet", type=Path, help="MobileNetV2 .keras file")
    parser.add_argument("--cnn-int8", type=Path, help="Shipped int8 .efm of the CNN; converted here when absent")
    parser.add_argument("--mobilenet-int8", type=Path, help="Shipped int8 .efm of MobileNetV2")
    parser.add_argument("--images", type=int, default=300, help="Size of the image subset every variant scores")
    parser.add_argument("--calibration-images", type=int, default=200,
                        help="Training-split images that calibrate the int8 conversions made here")
    parser.add_argument("--runs", type=int, default=50, help="Measured invoke runs per variant and thread count")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cold-start-repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(names.ALL_VARIANTS), choices=names.ALL_VARIANTS)
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="Converted models and scratch files")
    parser.add_argument("--output", type=Path, default=HERE, help="Folder for RESULTS.md and results.json")
    return parser.parse_args()


def _evenly_spaced(items: list, count: int) -> list:
    if count <= 0 or count >= len(items):
        return items
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def select_images(data: Path, split_file: Path, count: int, calibration_count: int):
    """Return (subset images, calibration paths, description of the selection)."""
    images = {image.image_id: image for image in read_labelled_folder(data)}
    if split_file.is_file():
        from converters.split import read_split

        split = read_split(split_file, data)
        test = [images[e.image_id] for e in split.subset("test", decodable_only=True) if e.image_id in images]
        train = [images[e.image_id] for e in split.subset("train", decodable_only=True) if e.image_id in images]
        subset = _evenly_spaced(sorted(test, key=lambda i: i.image_id), count)
        calibration = _evenly_spaced(sorted(train, key=lambda i: i.image_id), calibration_count)
        description = (f"{len(subset)} of the {len(test)} fully decodable test-split images of {split_file.name}, "
                       f"evenly spaced by image id; int8 calibration on {len(calibration)} training-split images")
        return subset, [image.path for image in calibration], description
    logger.warning("split file %s not found: accuracy is measured on images the models may have trained on",
                   split_file)
    ordered = sorted(images.values(), key=lambda i: i.image_id)
    subset = _evenly_spaced(ordered, count)
    calibration = _evenly_spaced(ordered[1:], calibration_count)
    description = f"{len(subset)} images evenly spaced over the whole folder (no split file: not held out)"
    return subset, [image.path for image in calibration], description


def link_subset(subset, folder: Path) -> None:
    """Lay the subset out as a labelled folder of symbolic links (no image is copied).

    Links from an earlier run are removed first, so the folder is exactly this subset.
    """
    if folder.exists():
        shutil.rmtree(folder)
    for image in subset:
        target = folder / "images" / image.class_name / image.image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(image.path.resolve())


def measure_model(name, architecture, keras_path: Path, int8_path: Path | None, arguments, calibration, subset,
                  work: Path) -> dict:
    """Convert one Keras model into every variant and measure each; return the model's results entry."""
    from converters.architectures import preprocess_config
    from converters.tf import keras
    from suite.prepare import prepare_model

    model_files = prepare_model(name, keras_path.resolve(), int8_path, calibration, work,
                                default_config=preprocess_config(architecture))
    labels = {image.image_id: image.label for image in subset}
    macs_by_layer = layer_macs(keras.models.load_model(keras_path, compile=False))
    entry = {
        "keras": str(keras_path),
        "preprocessing": model_files.preprocessing.to_dict(),
        "threshold": model_files.threshold,
        "int8_threshold": model_files.int8_threshold,
        "test_time_augmentation": model_files.augmentation.value,
        "views": model_files.augmentation.view_count,
        "macs": sum(macs_by_layer.values()),
        "macs_by_layer": macs_by_layer,
        "variants": {},
    }
    end_to_end_threads = max(arguments.threads)
    for variant in arguments.variants:
        path = model_files.files[variant]
        result = {"file": str(path), "file_bytes": os.path.getsize(path), "invoke": {}}
        for threads in arguments.threads:
            measured = measure.run_worker(
                variant, model_files, threads, arguments.runs, arguments.warmup,
                work / "subset.json" if threads == end_to_end_threads else None, work,
            )
            result["invoke"][str(threads)] = measured
            if "end_to_end" in measured:
                # The int8 card may carry its own threshold, chosen on the int8 model's outputs.
                is_tflite_int8 = variant in (names.TFLITE_INT8, names.TFLITE_RUNTIME_INT8)
                threshold = model_files.int8_threshold if is_tflite_int8 else model_files.threshold
                result["end_to_end"] = measured["end_to_end"]
                result["accuracy"] = measure.accuracy(measured.pop("probabilities"), labels, threshold)
                result["failed_images"] = measured.pop("failed")
        command, environment = measure.one_image_command(variant, model_files, subset[0].path)
        result["cold_start"] = measure.cold_start(command, environment, arguments.cold_start_repeats)
        entry["variants"][variant] = result
    if names.TFLITE_INT8 in arguments.variants:
        entry["infer_folder"] = measure.infer_folder(model_files.files[names.TFLITE_INT8], work / "subset")
    return entry


def main() -> int:
    arguments = _arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    subset, calibration, selection = select_images(arguments.data, arguments.split, arguments.images,
                                                   arguments.calibration_images)
    subset_folder = work / "subset"
    link_subset(subset, subset_folder)
    images_file = work / "subset.json"
    images_file.write_text(json.dumps([[image.image_id, str(image.path)] for image in subset]))

    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": collect_environment(resolve_runtime().info).to_dict(),
        "cpu_flags": cpu_flags_summary(),
        "platform": platform.platform(),
        "selection": selection,
        "settings": {"runs": arguments.runs, "warmup": arguments.warmup, "threads": arguments.threads,
                     "cold_start_repeats": arguments.cold_start_repeats},
        "models": {},
    }
    peak = int8_peak()
    report["int8_peak"] = {"macs_per_second": peak.macs_per_second, "formula": peak.formula()}
    report["startup_profile"] = measure.startup_profile(arguments.cold_start_repeats)

    model_paths = {"cnn": (arguments.cnn, arguments.cnn_int8), "mobilenetv2": (arguments.mobilenet, arguments.mobilenet_int8)}
    for name, architecture in MODELS:
        keras_path, int8_path = model_paths[name]
        if keras_path is not None:
            report["models"][name] = measure_model(
                name, architecture, keras_path, int8_path, arguments, calibration, subset, work
            )

    report["targets"] = results.check_targets(report)
    arguments.output.mkdir(parents=True, exist_ok=True)
    (arguments.output / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (arguments.output / "RESULTS.md").write_text(results.render_markdown(report))
    logger.info("wrote %s and %s", arguments.output / "RESULTS.md", arguments.output / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
