"""Conversion: representative dataset, int8 tensors, threshold re-tuning, drift gate, train -> convert -> infer."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgefrac.exitcodes import ExitCode

pytestmark = pytest.mark.slow

EDGEFRAC = [str(Path(sys.executable).parent / "edgefrac")]


def _make_dataset(root: Path, per_class: int = 24, size: int = 48) -> Path:
    """Write a two-class folder where fractured images carry a bright diagonal line."""
    rng = np.random.default_rng(3)
    for class_name, fractured in (("Fractured", True), ("Non_fractured", False)):
        folder = root / "images" / class_name
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(40, 120, (size, size), dtype=np.uint8)
            image = Image.fromarray(pixels, mode="L")
            if fractured:
                draw = ImageDraw.Draw(image)
                offset = int(rng.integers(0, size // 2))
                draw.line((offset, 0, offset + size // 2, size - 1), fill=255, width=3)
            image.save(folder / f"{class_name[0]}{index:03d}.png")
    return root


@pytest.fixture(scope="module")
def labelled_dataset(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="module")
def split_file(labelled_dataset, tmp_path_factory) -> Path:
    from converters.split import make_split, write_split

    path = tmp_path_factory.mktemp("split") / "split.json"
    write_split(make_split(labelled_dataset, seed=5, fractions=(0.5, 0.25, 0.25)), path)
    return path


def _run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEFRAC, *map(str, arguments)], capture_output=True, text=True, timeout=600)


def _train_cnn(dataset: Path, split_file: Path, model: Path, epochs: int) -> None:
    """Train the custom CNN at 32x32 into ``model`` with `edgefrac train`."""
    trained = _run(
        "train", "--split-file", split_file, "--data", dataset, "--arch", "cnn", "--resolution", "32",
        "--epochs", str(epochs), "--output", model,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]


def test_representative_dataset_dtype_and_shape(labelled_dataset, split_file):
    from converters import calibration
    from converters.split import read_split
    from edgefrac.preprocessing import PreprocessConfig, ValueScaling

    config = PreprocessConfig(height=32, width=32, scaling=ValueScaling.SYMMETRIC)
    dataset = calibration.from_split(read_split(split_file, labelled_dataset), config, size=10, seed=0)

    assert dataset.inputs.dtype == np.float32
    assert dataset.inputs.shape == (10, 32, 32, 3)
    assert dataset.inputs.min() >= -1.0
    assert dataset.inputs.max() <= 1.0
    assert len(set(dataset.image_ids)) == 10


def test_representative_dataset_uses_training_split_only(labelled_dataset, split_file):
    from converters import calibration
    from converters.split import read_split
    from edgefrac.preprocessing import PreprocessConfig

    split = read_split(split_file, labelled_dataset)
    training_ids = {e.image_id for e in split.subset("train")}
    dataset = calibration.from_split(split, PreprocessConfig(height=32, width=32), size=1000, seed=0)

    assert set(dataset.image_ids) == training_ids


def test_stratified_sample_keeps_class_proportions():
    from converters.calibration import stratified_sample
    from converters.split import SplitEntry

    entries = [
        SplitEntry(f"id{i}", f"x/{i}.png", int(i < 20), "hand", None, str(i), True, "train") for i in range(100)
    ]
    sample = stratified_sample(entries, 10, seed=1)

    assert len(sample) == 10
    assert sum(e.label for e in sample) == 2


def test_int8_tensors_are_int8(tiny_int8_probability_model):
    from edgefrac.classifier import FractureClassifier

    classifier = FractureClassifier.from_path(tiny_int8_probability_model)

    assert classifier.input_tensor.dtype == "int8"
    assert classifier.output_tensor.dtype == "int8"
    assert classifier.input_tensor.shape == (1, 32, 32, 3)


def test_sigmoid_output_scale_and_zero_point(tiny_int8_probability_model):
    from edgefrac.classifier import FractureClassifier

    output = FractureClassifier.from_path(tiny_int8_probability_model).output_tensor

    assert output.scale == pytest.approx(1.0 / 256.0)
    assert output.zero_point == -128


def test_int8_output_varies_across_inputs(tiny_int8_model):
    from edgefrac.classifier import FractureClassifier

    classifier = FractureClassifier.from_path(tiny_int8_model)
    rng = np.random.default_rng(11)
    raw = {classifier.invoke(rng.random((32, 32, 3), dtype=np.float32)) for _ in range(12)}

    assert len(raw) > 1


def test_int8_model_has_only_integer_ops(tiny_int8_model):
    from edgefrac.modelfile import load_model
    from edgefrac.runtime import make_interpreter

    interpreter = make_interpreter(load_model(tiny_int8_model).tflite, threads=1)
    float_tensors = [
        t["name"] for t in interpreter.get_tensor_details() if np.dtype(t["dtype"]) == np.float32
    ]

    assert float_tensors == []


def test_retune_threshold_keeps_target_sensitivity():
    from converters.convert import retune_threshold

    levels = np.arange(256) / 256.0
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    probabilities = np.clip(levels[rng.integers(0, 256, 400)] * 0.5 + labels * 0.3, 0, 1)
    reference = probabilities + rng.normal(0, 0.01, 400) >= 0.4

    threshold = retune_threshold(probabilities, labels, reference, 0.9)

    assert threshold in set(probabilities.tolist())
    assert (probabilities[labels == 1] >= threshold).mean() >= 0.9


def test_train_convert_infer_chain(labelled_dataset, split_file, tmp_path):
    model = tmp_path / "cnn.keras"
    _train_cnn(labelled_dataset, split_file, model, epochs=3)
    assert model.with_suffix(".json").is_file()

    converted = _run(
        "convert", model, "--calibration", labelled_dataset, "--split-file", split_file, "--output-dir", tmp_path,
        "--calibration-size", "12", "--variant", "int8", "--variant", "float32", "--json",
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    report = json.loads(converted.stdout)
    int8 = next(r for r in report["results"] if r["variant"] == "int8")
    assert Path(int8["path"]).is_file()
    assert 0.0 <= int8["validation"]["overall"]["agreement"] <= 1.0
    assert int8["validation"]["overall"]["logit_delta_std"] > 0.0
    assert 0 <= int8["validation"]["overall"]["near_threshold"] <= int8["validation"]["overall"]["images"]
    assert report["calibration_images"] == 12
    steps = int8["post_calibration"]
    assert steps["images"] == 12
    assert steps["weight_rounding"]["ops"] >= 4
    assert steps["bias_correction"]["ops"] >= 4
    # Range tuning needs 16 images, and this run has 12.
    assert steps["range_tuning"] == {"skipped": "12 images, fewer than 16"}
    assert next(r for r in report["results"] if r["variant"] == "float32")["post_calibration"] is None

    inferred = _run("infer", "--model", int8["path"], "--json", labelled_dataset / "images")
    assert inferred.returncode == 0, inferred.stderr[-2000:]
    rows = json.loads(inferred.stdout)["results"]
    assert len(rows) == 48
    assert all(0.0 <= row["probability"] <= 1.0 for row in rows)

    with zipfile.ZipFile(int8["path"]) as archive:
        card = json.loads(archive.read("card.json"))
    assert card["provenance"]["calibration_images"] == 12
    assert len(card["provenance"]["calibration_ids_sha256"]) == 64
    assert card["threshold"]["chosen_on"].startswith("validation split")
    assert card["provenance"]["post_calibration"] == steps


def test_post_calibration_steps_can_be_switched_off(tiny_keras_model, labelled_dataset, split_file, tmp_path):
    converted = _run(
        "convert", tiny_keras_model, "--calibration", labelled_dataset, "--split-file", split_file,
        "--output-dir", tmp_path, "--calibration-size", "8", "--variant", "int8", "--scaling", "0_1",
        "--threshold", "0.5", "--no-weight-rounding", "--no-range-tuning", "--no-bias-correction", "--json",
    )
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert json.loads(converted.stdout)["results"][0]["post_calibration"] is None

    only_bias = _run(
        "convert", tiny_keras_model, "--calibration", labelled_dataset, "--split-file", split_file,
        "--output-dir", tmp_path, "--calibration-size", "8", "--variant", "int8", "--scaling", "0_1",
        "--threshold", "0.5", "--no-weight-rounding", "--no-range-tuning", "--correction-images", "5", "--json",
    )
    assert only_bias.returncode == 0, only_bias.stderr[-2000:]
    steps = json.loads(only_bias.stdout)["results"][0]["post_calibration"]
    assert set(steps) == {"images", "bias_correction"}
    assert steps["images"] == 5
    assert steps["bias_correction"]["images"] == 5


def test_drift_gate_exit_code(tiny_keras_model, labelled_dataset, split_file, tmp_path):
    # The untrained tiny model's probabilities all lie within a fraction of one
    # 1/256 step, so a 256-level sigmoid output must flip decisions near the threshold.
    common = [
        "convert", tiny_keras_model, "--calibration", labelled_dataset, "--split-file", split_file,
        "--output-dir", tmp_path, "--calibration-size", "8", "--variant", "int8", "--output-kind", "probability",
        "--scaling", "0_1", "--threshold", "0.5", "--target-sensitivity", "0.9", "--json",
    ]
    strict = _run(*common, "--max-drift", "0")
    report = json.loads(strict.stdout)
    disagreement = 1.0 - report["results"][0]["validation"]["overall"]["agreement"]
    assert disagreement > 0.0, "the fixture no longer produces drift; the gate test needs a drifting model"
    assert strict.returncode == ExitCode.DRIFT_EXCEEDED, strict.stderr[-2000:]

    lenient = _run(*common, "--max-drift", "1")
    assert lenient.returncode == ExitCode.OK, lenient.stderr[-2000:]


def test_post_calibration_failure_keeps_calibrated_model(
    tiny_keras_model, labelled_dataset, split_file, tmp_path, monkeypatch, caplog
):
    from converters import convert as convert_module
    from converters.convert import ConvertOptions, convert_keras_model
    from converters.tflite import Variant
    from edgefrac.errors import UsageError
    from edgefrac.preprocessing import PreprocessConfig, ValueScaling

    def unsupported(*arguments, **keywords):
        raise UsageError("tensor 'x' has no counterpart in the float model")

    monkeypatch.setattr(convert_module, "refine", unsupported)
    options = ConvertOptions(
        variants=(Variant.INT8,), calibration_size=8, threshold=0.5,
        preprocessing=PreprocessConfig(height=32, width=32, scaling=ValueScaling.UNIT),
    )
    report = convert_keras_model(
        tiny_keras_model, tmp_path, split_path=split_file, calibration_dir=labelled_dataset, options=options
    )

    int8 = report.result(Variant.INT8)
    assert int8.path.is_file()
    assert int8.post_calibration == {"skipped": "UsageError: tensor 'x' has no counterpart in the float model"}
    assert "post-calibration steps skipped" in caplog.text


def test_agreement_noise_tool_on_trained_model(labelled_dataset, split_file, tmp_path):
    model = tmp_path / "cnn.keras"
    _train_cnn(labelled_dataset, split_file, model, epochs=1)
    tool = Path(__file__).resolve().parents[1] / "tools" / "agreement_noise.py"

    def simulate(*sigmas: str) -> dict[str, list[float]]:
        arguments = [sys.executable, str(tool), str(model), "--split-file", str(split_file),
                     "--data", str(labelled_dataset), "--draws", "20"]
        for sigma in sigmas:
            arguments += ["--sigma", sigma]
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        rows = [line.split() for line in result.stdout.splitlines()[2:]]
        return {row[0]: [float(cell) for cell in row[1:]] for row in rows}

    both = simulate("0", "5")
    # A noiseless copy re-tuned on validation decides every image as the Keras model does.
    assert both["0.000"] == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert both["5.000"][0] < 1.0
    # Each row has its own generator, so asking for another row does not change it.
    assert simulate("5")["5.000"] == both["5.000"]


def test_retune_threshold_keeps_reference_on_tie():
    from converters.convert import retune_threshold

    probabilities = np.array([0.5009, 0.5012, 0.5016, 0.5018, 0.5020, 0.5022])
    labels = np.array([0, 0, 1, 0, 1, 1])
    reference_threshold = 0.5015
    reference = probabilities >= reference_threshold

    threshold = retune_threshold(probabilities, labels, reference, 0.4, reference_threshold=reference_threshold)

    assert threshold == reference_threshold


def test_retune_threshold_leaves_reference_missing_target():
    from converters.convert import retune_threshold

    probabilities = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    labels = np.array([0, 1, 0, 1, 1, 0])
    reference = probabilities >= 0.5

    threshold = retune_threshold(probabilities, labels, reference, 0.9, reference_threshold=0.5)

    assert threshold == pytest.approx(0.2)


def _convert_cli(*arguments):
    from click.testing import CliRunner

    from edgefrac.cli import main

    return CliRunner().invoke(main, ["convert", *map(str, arguments)])


def _save_model(path: Path, output_layer) -> Path:
    """Save a 32x32 model whose last layer is ``output_layer``."""
    from converters.tf import keras

    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, output_layer(x))
    model.save(path)
    return path


def _with_record(model: Path, size: int = 32, **extra) -> Path:
    record = {
        "preprocessing": {"height": size, "width": size, "channels": 3, "channel_order": "RGB",
                          "resize": "bilinear", "scaling": "0_1"},
        "threshold": {"value": 0.5, "target_sensitivity": 0.9},
        **extra,
    }
    model.with_suffix(".json").write_text(json.dumps(record))
    return model


@pytest.fixture()
def recorded_model(tiny_keras_model, tmp_path) -> Path:
    """A copy of the tiny model with a 32x32 training record beside it."""
    model = tmp_path / "recorded.keras"
    model.write_bytes(tiny_keras_model.read_bytes())
    return _with_record(model)


@pytest.mark.parametrize("extra", [[], ["--variant", "float16"]], ids=["no-split", "no-int8"])
def test_max_drift_needs_split_and_int8(tiny_keras_model, labelled_dataset, split_file, tmp_path, extra):
    split = [] if not extra else ["--split-file", split_file]
    result = _convert_cli(
        tiny_keras_model, "--calibration", labelled_dataset, *split, *extra, "--scaling", "0_1",
        "--max-drift", "0", "--output-dir", tmp_path,
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--max-drift needs --split-file and the int8 variant" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", [["--scaling", "0_255"], ["--resize", "nearest"]])
def test_scaling_rejected_with_record(recorded_model, labelled_dataset, tmp_path, option):
    result = _convert_cli(recorded_model, "--calibration", labelled_dataset, *option, "--output-dir", tmp_path)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "apply only to a model without a training record" in result.output
    assert str(recorded_model.with_suffix(".json")) in result.output


def test_record_size_differs_from_model(recorded_model, labelled_dataset, split_file, tmp_path):
    _with_record(recorded_model, size=64)
    result = _convert_cli(
        recorded_model, "--calibration", labelled_dataset, "--split-file", split_file, "--output-dir", tmp_path,
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "is for 64x64 inputs" in result.output
    assert "takes 32x32" in result.output


@pytest.mark.parametrize(
    ("units", "activation", "message"),
    [(1, "linear", "with activation linear"), (2, "softmax", "outputs shape (None, 2)")],
)
def test_non_sigmoid_output_rejected(labelled_dataset, split_file, tmp_path, units, activation, message):
    from converters.tf import keras

    model = _with_record(_save_model(tmp_path / "model.keras", keras.layers.Dense(units, activation=activation)))
    result = _convert_cli(model, "--calibration", labelled_dataset, "--split-file", split_file,
                          "--output-dir", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.output
    assert "expected one output unit with a sigmoid activation" in result.output
    assert not (tmp_path / "out").exists()


def test_split_other_than_training_rejected(recorded_model, labelled_dataset, tmp_path):
    from converters.split import make_split, write_split

    trained_on = make_split(labelled_dataset, seed=5, fractions=(0.5, 0.25, 0.25))
    other = tmp_path / "other-split.json"
    write_split(make_split(labelled_dataset, seed=6, fractions=(0.5, 0.25, 0.25)), other)
    _with_record(recorded_model, split_ids_sha256={"train": trained_on.ids_hash(trained_on.subset("train"))})
    result = _convert_cli(recorded_model, "--calibration", labelled_dataset, "--split-file", other,
                          "--output-dir", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "pass the --split-file the model was trained with" in result.output


def _copy_without(labelled_dataset: Path, split_file: Path, target: Path, left_out: dict[str, int]) -> Path:
    """Copy the split's images into ``target``, leaving out the first ``left_out[name]`` images of each split."""
    from converters.split import read_split

    skipped = dict.fromkeys(left_out, 0)
    for entry in read_split(split_file).entries:
        if skipped.get(entry.split, 0) < left_out.get(entry.split, 0):
            skipped[entry.split] += 1
            continue
        destination = target / entry.relative_path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes((labelled_dataset / entry.relative_path).read_bytes())
    return target


def test_missing_validation_images_named(recorded_model, labelled_dataset, split_file, tmp_path):
    copy = _copy_without(labelled_dataset, split_file, tmp_path / "data", {"validation": 12})
    arguments = [recorded_model, "--calibration", copy, "--split-file", split_file, "--variant", "float32",
                 "--output-dir", tmp_path / "out"]

    result = _convert_cli(*arguments)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"12 of 12 validation images of split file {split_file} are missing from {copy.resolve()}" in result.output
    assert f"pass --calibration the folder the split file was written for ({labelled_dataset.resolve()})" in result.output
    assert "or add --allow-missing-images" in result.output

    allowed = _convert_cli(*arguments, "--allow-missing-images")
    assert allowed.exit_code == ExitCode.USAGE, allowed.output
    assert "12 of 12 images could not be loaded" in allowed.output
    assert "check that --calibration points at the dataset folder" in allowed.output


def test_some_missing_images_exit_2(recorded_model, labelled_dataset, split_file, tmp_path):
    copy = _copy_without(labelled_dataset, split_file, tmp_path / "data", {"validation": 3, "test": 2})
    output_dir = tmp_path / "out"
    result = _convert_cli(recorded_model, "--calibration", copy, "--split-file", split_file, "--variant", "float32",
                          "--output-dir", output_dir)

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "3 of 12 validation images and 2 of 12 test images of split file" in result.output
    assert "so drift would be measured on part of the split" in result.output
    assert "Traceback" not in result.output
    assert not output_dir.exists()


def test_allow_missing_images_records_count(recorded_model, labelled_dataset, split_file, tmp_path):
    from edgefrac.modelfile import load_model

    copy = _copy_without(labelled_dataset, split_file, tmp_path / "data", {"validation": 3, "test": 2})
    output_dir = tmp_path / "out"
    result = _convert_cli(recorded_model, "--calibration", copy, "--split-file", split_file, "--variant", "float32",
                          "--output-dir", output_dir, "--allow-missing-images", "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert "validation split: 3 of 12 images could not be loaded" in result.stderr
    assert "test split: 2 of 12 images could not be loaded" in result.stderr
    variant = json.loads(result.stdout)["results"][0]
    assert variant["missing_images"] == {"validation": 3, "test": 2}
    assert variant["validation"]["overall"]["images"] == 9
    assert variant["test"]["overall"]["images"] == 10
    evaluation = load_model(output_dir / "recorded-float32.efm").card.evaluation
    assert evaluation["drift_validation"]["missing_images"] == 3
    assert evaluation["drift_validation"]["images"] == 9
    assert evaluation["drift_test"]["missing_images"] == 2


def test_complete_split_records_no_missing(recorded_model, labelled_dataset, split_file, tmp_path):
    from edgefrac.modelfile import load_model

    result = _convert_cli(recorded_model, "--calibration", labelled_dataset, "--split-file", split_file,
                          "--variant", "float32", "--output-dir", tmp_path, "--json")

    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)["results"][0]["missing_images"] == {"validation": 0, "test": 0}
    evaluation = load_model(tmp_path / "recorded-float32.efm").card.evaluation
    assert evaluation["drift_validation"]["missing_images"] == 0
    assert evaluation["drift_test"]["missing_images"] == 0


def test_calibration_logs_truncated_without_option_hint(labelled_split, caplog):
    from converters import calibration
    from edgefrac.preprocessing import PreprocessConfig, ValueScaling

    root, _ = labelled_split
    config = PreprocessConfig(height=32, width=32, scaling=ValueScaling.UNIT)
    caplog.set_level("INFO")
    representative = calibration.from_folder(root, config, size=1000)

    assert "1 truncated images left out" in caplog.text
    assert "--calibration-size 1000 exceeds" in caplog.text
    assert "--allow-truncated" not in caplog.text
    assert len(representative) == sum(1 for _ in (root / "images").rglob("*.jpg")) - 1


def test_convert_scores_both_models_in_mirror_views(recorded_model, labelled_dataset, split_file, tmp_path):
    from converters.scoring import keras_probabilities
    from converters.split import read_split
    from converters.tf import keras
    from edgefrac.classifier import FractureClassifier
    from edgefrac.images import load_input
    from edgefrac.modelfile import load_model
    from edgefrac.tta import TestTimeAugmentation

    flip = TestTimeAugmentation.HORIZONTAL_FLIP
    _with_record(recorded_model, test_time_augmentation="horizontal_flip")
    result = _convert_cli(recorded_model, "--calibration", labelled_dataset, "--split-file", split_file,
                          "--variant", "int8", "--calibration-size", "12", "--output-dir", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["test_time_augmentation"] == "horizontal_flip"
    efm = Path(report["results"][0]["path"])
    card = load_model(efm).card
    assert card.test_time_augmentation is flip

    split = read_split(split_file, labelled_dataset)
    classifier = FractureClassifier.from_path(efm)
    config = classifier.preprocessing
    inputs = np.stack([load_input(split.path_of(e), config) for e in split.subset("validation", decodable_only=True)])
    model = keras.models.load_model(recorded_model, compile=False)
    keras_scores = keras_probabilities(model, inputs, flip)
    single = keras_probabilities(model, inputs, TestTimeAugmentation.NONE)
    assert not np.allclose(keras_scores, single), "the mirror images must score differently for this test"
    int8_scores = np.array([classifier.predict_input(x).probability for x in inputs])
    agreement = np.mean((keras_scores >= 0.5) == (int8_scores >= card.threshold.value))
    drift = card.evaluation["drift_validation"]
    assert drift["agreement"] == pytest.approx(agreement)
    assert drift["images"] == len(inputs)
    assert drift["max_abs_delta_p"] == pytest.approx(np.max(np.abs(keras_scores - int8_scores)))
