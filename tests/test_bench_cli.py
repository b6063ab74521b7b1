"""``edgefrac bench`` end to end: real interpreter, real converted models, generated labelled images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgefrac.bench.accuracy import TFLiteReference, measure_drift
from edgefrac.bench.latency import benchmark_end_to_end
from edgefrac.classifier import FractureClassifier
from edgefrac.cli import main
from edgefrac.dataset import read_labelled_folder
from edgefrac.exitcodes import ExitCode

SIZE = 16
BRIGHT_IMAGES = 4
DARK_IMAGES = 4


def _brightness_model(bias: float):
    """Build a Keras model whose logit is ``12 * mean pixel value + bias`` on [0, 1] inputs."""
    from converters import architectures
    from converters.tf import keras

    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logit_layer = keras.layers.Dense(1, name=architectures.LOGIT_LAYER)
    logit = logit_layer(pooled)
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(logit)
    logit_layer.set_weights([np.full((3, 1), 4.0, dtype=np.float32), np.array([bias], dtype=np.float32)])
    return keras.Model(inputs, probability, name="brightness")


def _write_model(model, variant: str, output_kind: str, path: Path, *, with_card: bool = True) -> Path:
    from converters.cards import card_for_model
    from converters.tflite import convert
    from edgefrac.card import DecisionThreshold
    from edgefrac.modelfile import write_model_file
    from edgefrac.preprocessing import PreprocessConfig, ValueScaling

    representative = np.random.default_rng(0).random((16, SIZE, SIZE, 3), dtype=np.float32)
    tflite = convert(model, variant, representative_inputs=representative, output_kind=output_kind)
    if not with_card:
        path.write_bytes(tflite)
        return path
    card = card_for_model(
        tflite,
        name=f"brightness-{variant}",
        architecture="test",
        preprocessing=PreprocessConfig(height=SIZE, width=SIZE, scaling=ValueScaling.UNIT),
        output_kind=output_kind,
        threshold=DecisionThreshold(0.5, chosen_on="fixed for tests"),
        provenance={},
    )
    write_model_file(path, tflite, card)
    return path


@pytest.fixture(scope="module")
def brightness_models(tmp_path_factory) -> dict[str, Path]:
    """int8 and float32 conversions of one brightness model, and a float32 copy with a shifted bias.

    Bright images score about 0.95 and dark ones 0.05 with bias -6; the
    shifted copy (bias 0) scores every image above 0.5, so exactly the dark
    images flip.
    """
    folder = tmp_path_factory.mktemp("brightness")
    model = _brightness_model(-6.0)
    shifted = _brightness_model(0.0)
    return {
        "int8": _write_model(model, "int8", "logit", folder / "int8.efm"),
        "float32": _write_model(model, "float32", "probability", folder / "float32.tflite", with_card=False),
        "float32_card": _write_model(model, "float32", "probability", folder / "float32.efm"),
        "shifted": _write_model(shifted, "float32", "probability", folder / "shifted.tflite", with_card=False),
    }


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory) -> Path:
    """Two class folders: bright images under Fractured, dark ones under Non_fractured, with a dataset.csv."""
    root = tmp_path_factory.mktemp("labelled")
    rng = np.random.default_rng(5)
    rows = ["image_id,hand,leg,hip,shoulder,mixed,hardware,fractured"]
    for class_name, count, low, high in (("Fractured", BRIGHT_IMAGES, 200, 256), ("Non_fractured", DARK_IMAGES, 0, 56)):
        (root / "images" / class_name).mkdir(parents=True)
        for index in range(count):
            name = f"{class_name[0]}{index}.png"
            pixels = rng.integers(low, high, (40, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / class_name / name)
            hand, leg = (1, 0) if index % 2 == 0 else (0, 1)
            rows.append(f"{name},{hand},{leg},0,0,0,0,{int(class_name == 'Fractured')}")
    (root / "dataset.csv").write_text("\n".join(rows) + "\n")
    return root


def _bench(*arguments: str):
    return CliRunner().invoke(main, ["bench", *arguments])


def _bench_json(*arguments: str) -> dict:
    result = _bench(*arguments, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_schema(brightness_models, labelled_folder):
    report = _bench_json(
        str(brightness_models["int8"]), "--threads", "1", "--threads", "2", "--runs", "3", "--warmup", "1",
        "--data", str(labelled_folder), "--reference", str(brightness_models["float32"]),
    )
    assert report["format"] == "edgefrac-bench/1"
    assert set(report) == {"format", "model", "environment", "invoke", "end_to_end", "peak_rss_bytes", "drift",
                           "warnings"}
    assert isinstance(report["peak_rss_bytes"], int)
    assert report["model"]["input_dtype"] == "int8"
    assert report["model"]["file_bytes"] == brightness_models["int8"].stat().st_size
    assert [entry["threads"] for entry in report["invoke"]] == [1, 2]
    invoke = report["invoke"][0]
    assert set(invoke) == {"threads", "init_ms", "first_inference_ms", "warmup", "measured"}
    assert invoke["measured"]["runs"] == 3
    assert invoke["warmup"]["runs"] == 1
    assert isinstance(invoke["measured"]["p99_ms"], float)
    end_to_end = report["end_to_end"][0]
    assert end_to_end["images"] == BRIGHT_IMAGES + DARK_IMAGES
    assert end_to_end["failed"] == 0
    assert isinstance(end_to_end["images_per_second"], float)
    drift = report["drift"]
    assert set(drift) == {"reference", "reference_threshold", "candidate_threshold", "overall", "groups", "flipped_ids"}
    assert drift["reference"]["threshold_source"].startswith("candidate model card")
    assert set(drift["groups"]) == {"class:Fractured", "class:Non_fractured", "region:hand", "region:leg"}
    assert isinstance(report["environment"]["cpu_cores"], int)


def test_drift_against_itself_zero(brightness_models, labelled_folder):
    drift = _bench_json(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["int8"]),
    )["drift"]
    assert drift["overall"]["agreement"] == 1.0
    assert drift["overall"]["flipped"] == 0
    assert drift["overall"]["max_abs_delta_p"] == 0.0
    assert drift["overall"]["logit_delta_std"] == 0.0
    assert drift["overall"]["near_threshold"] == 0
    assert drift["overall"]["delta_auc"] == 0.0
    assert drift["flipped_ids"] == []
    assert drift["reference"]["threshold_source"] == "reference model card"


def test_drift_int8_against_float(brightness_models, labelled_folder):
    drift = _bench_json(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["float32_card"]),
    )["drift"]
    assert drift["overall"]["max_abs_delta_p"] > 0.0
    assert drift["overall"]["logit_delta_std"] > 0.0
    assert drift["overall"]["flipped"] == 0


def test_drift_perturbed_copy(brightness_models, labelled_folder):
    drift = _bench_json(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["shifted"]),
    )["drift"]
    assert drift["overall"]["flipped"] == DARK_IMAGES
    assert sorted(drift["flipped_ids"]) == [f"N{i}.png" for i in range(DARK_IMAGES)]
    assert drift["groups"]["class:Fractured"]["flipped"] == 0
    assert drift["overall"]["delta_specificity"] == pytest.approx(1.0)
    assert drift["overall"]["mean_abs_delta_p"] > 0.3


def test_drift_gate_exceeded(brightness_models, labelled_folder):
    result = _bench(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["shifted"]), "--max-drift", "0.25",
    )
    assert result.exit_code == ExitCode.DRIFT_EXCEEDED
    assert "more than --max-drift" in result.stderr


def test_drift_gate_passed(brightness_models, labelled_folder):
    result = _bench(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["shifted"]), "--max-drift", "0.5",
    )
    assert result.exit_code == ExitCode.OK, result.output


def test_reference_threshold_option(brightness_models, labelled_folder):
    drift = _bench_json(
        str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["shifted"]), "--reference-threshold", "0.99",
    )["drift"]
    assert drift["reference_threshold"] == 0.99
    assert drift["reference"]["threshold_source"] == "--reference-threshold"


def test_max_drift_needs_reference(brightness_models, labelled_folder):
    result = _bench(str(brightness_models["int8"]), "--data", str(labelled_folder), "--max-drift", "0.1")
    assert result.exit_code == ExitCode.USAGE
    assert "--max-drift needs --reference" in result.stderr


def test_reference_needs_labels(brightness_models, sample_images):
    result = _bench(
        str(brightness_models["int8"]), "--runs", "1", "--data", str(sample_images),
        "--reference", str(brightness_models["float32"]),
    )
    assert result.exit_code == ExitCode.USAGE
    assert "one subfolder per class" in result.stderr


def test_unlabelled_folder_timed(brightness_models, sample_images):
    report = _bench_json(str(brightness_models["int8"]), "--runs", "2", "--warmup", "0", "--data", str(sample_images))
    assert report["end_to_end"][0]["images"] == 4
    assert report["drift"] is None


def test_invalid_threads(brightness_models):
    result = _bench(str(brightness_models["int8"]), "--threads", "0")
    assert result.exit_code == ExitCode.USAGE
    assert "invalid --threads" in result.stderr


def test_text_table(brightness_models):
    result = _bench(str(brightness_models["int8"]), "--runs", "2", "--warmup", "1")
    assert result.exit_code == 0, result.output
    assert "invoke" in result.stdout
    assert "p99" in result.stdout
    assert "runtime:" in result.stdout


def test_missing_model_exit_code(tmp_path):
    result = _bench(str(tmp_path / "absent.efm"))
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "'MODEL'" in result.stderr
    assert "does not exist" in result.stderr
    assert "--model" not in result.stderr


def test_text_table_warmup_row(brightness_models):
    result = _bench(str(brightness_models["int8"]), "--runs", "2", "--warmup", "3")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    warmup = [row for row in rows if row and row[0] == "warm-up"]
    assert len(warmup) == 1
    assert warmup[0][1:3] == ["1", "3"]


def test_text_table_without_warmup(brightness_models):
    result = _bench(str(brightness_models["int8"]), "--runs", "2", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "warm-up" not in result.stdout


def test_overrides_plain_tflite(brightness_models, labelled_folder):
    # The reference reads 0_1 scaling from its card. Read as 0_255, every dark image of the plain
    # copy becomes bright, so exactly the dark images flip; without the flag nothing flips.
    common = ("--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
              "--reference", str(brightness_models["float32_card"]))
    plain = str(brightness_models["float32"])
    assert _bench_json(plain, *common)["drift"]["overall"]["flipped"] == 0
    overridden = _bench_json(plain, *common, "--scaling", "0_255")
    assert overridden["drift"]["overall"]["flipped"] == DARK_IMAGES


def test_threshold_override(brightness_models):
    report = _bench_json(str(brightness_models["int8"]), "--runs", "1", "--warmup", "0", "--threshold", "0.3")
    assert report["model"]["threshold"] == pytest.approx(0.3)


def test_help_lists_override_options():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--threshold", "--scaling", "--resize", "--output-kind"):
        assert option in result.output


def test_markdown_report(brightness_models, labelled_folder, tmp_path):
    pytest.importorskip("matplotlib")
    folder = tmp_path / "report"
    result = _bench(
        str(brightness_models["int8"]), "--runs", "3", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(brightness_models["shifted"]), "--report", str(folder),
    )
    assert result.exit_code == 0, result.output
    markdown = (folder / "report.md").read_text()
    assert "## Accuracy drift" in markdown
    assert (folder / "latency.png").stat().st_size > 0
    assert (folder / "drift-scatter.png").stat().st_size > 0
    assert json.loads((folder / "report.json").read_text())["format"] == "edgefrac-bench/1"


def test_keras_reference(tiny_keras_model, tiny_int8_model, labelled_folder):
    drift = _bench_json(
        str(tiny_int8_model), "--runs", "1", "--warmup", "0", "--data", str(labelled_folder),
        "--reference", str(tiny_keras_model),
    )["drift"]
    assert drift["reference"]["kind"] == "keras"
    assert drift["overall"]["images"] == BRIGHT_IMAGES + DARK_IMAGES


def test_measure_drift_skips_failed(brightness_models, labelled_folder):
    images = read_labelled_folder(labelled_folder)
    broken = images[0].path.parent / "broken.png"
    candidate = FractureClassifier.from_path(brightness_models["int8"])
    pairs = [(image.image_id, image.path) for image in images] + [("broken.png", broken)]
    broken.write_bytes(b"not an image")
    try:
        result, scores = benchmark_end_to_end(candidate, pairs, threads=1)
    finally:
        broken.unlink()
    assert result.failed == 1
    reference = TFLiteReference(brightness_models["float32"], candidate)
    drift = measure_drift(images, scores, candidate.threshold, reference)
    assert drift.reference.images == len(images)


def test_help_documents_exit_codes():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    assert "4 the fraction of flipped decisions exceeded --max-drift" in " ".join(result.output.split())
