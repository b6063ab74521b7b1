"""`edgefrac train` and `edgefrac evaluate` of a Keras model on a generated dataset.

One tiny CNN (32x32 input, two epochs) is trained once for the module through
the CLI; the tests then read what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import WEIGHTS_DIR

from edgefrac.cli import main

pytestmark = pytest.mark.slow

MOBILENET_035_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


@pytest.fixture(scope="module")
def trained(labelled_split, tmp_path_factory):
    """Train the tiny CNN through the CLI; return (model path, log path, split file, CLI result)."""
    _, split_file = labelled_split
    folder = tmp_path_factory.mktemp("trained")
    model = folder / "tiny.keras"
    log = folder / "train.log"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(model), "--resolution", "32",
        "--epochs", "2", "--batch-size", "8", "--log-file", str(log),
    ]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    return model, log, split_file, result


def test_train_writes_model(trained):
    model, *_ = trained
    assert model.is_file()


def test_train_saves_no_optimizer_state(trained):
    import zipfile

    import h5py

    model, *_ = trained
    with zipfile.ZipFile(model) as archive, archive.open("model.weights.h5") as weights:
        with h5py.File(weights, "r") as store:
            assert "optimizer" not in store, sorted(store.keys())


def test_train_writes_record(trained):
    model, *_ = trained
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["model_file"] == "tiny.keras"
    assert record["recipe"]["resolution"] == 32
    assert record["recipe"]["epochs"] == 2
    assert record["preprocessing"]["height"] == 32


def test_train_log_has_epochs(trained):
    _, log, *_ = trained
    text = log.read_text()
    assert "train epoch 1:" in text
    assert "train epoch 2:" in text


def test_train_progress_on_stderr(trained):
    *_, result = trained
    assert "train epoch 1:" in result.stderr
    assert "epoch" not in result.stdout


def test_train_threshold_reaches_target(trained):
    from converters.evaluation import load_keras_model
    from converters.pixels import load_entries
    from converters.split import read_split
    from converters.training import predict_probabilities
    from edgefrac import metrics

    model, _, split_file, _ = trained
    record = json.loads(model.with_suffix(".json").read_text())
    loaded = load_keras_model(model)
    split = read_split(split_file)
    pixels, labels, _ = load_entries(split, split.subset("validation", decodable_only=True), loaded.preprocessing)
    scores = predict_probabilities(loaded.model, pixels, loaded.preprocessing)
    achieved = metrics.confusion(scores, labels, record["threshold"]["value"]).sensitivity
    assert achieved >= record["threshold"]["target_sensitivity"]
    assert record["threshold"]["sensitivity"] == pytest.approx(achieved)


def test_evaluate_keras_outputs(trained, tmp_path):
    model, _, split_file, _ = trained
    output = tmp_path / "report"
    result = CliRunner().invoke(
        main, ["evaluate", str(model), "--split-file", str(split_file), "--output", str(output), "--resamples", "50"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((output / "metrics.json").read_text())
    assert report["model"]["kind"] == "keras"
    assert report["threshold"]["source"] == "training record"
    assert report["overall"]["images"] == report["split"]["images"]
    assert (output / "metrics.md").read_text().count("\n| ") >= 2
    assert (output / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_keras_threshold_override(trained):
    model, _, split_file, _ = trained
    result = CliRunner().invoke(
        main,
        ["evaluate", str(model), "--split-file", str(split_file), "--threshold", "0.25", "--json", "--resamples", "20"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["threshold"] == {"value": 0.25, "source": "command line"}


def test_evaluate_keras_needs_record(trained, tmp_path):
    model, _, split_file, _ = trained
    lone = tmp_path / "lone.keras"
    lone.write_bytes(model.read_bytes())
    result = CliRunner().invoke(main, ["evaluate", str(lone), "--split-file", str(split_file)])
    assert result.exit_code == 2
    assert "no training record" in result.output


def test_train_defaults_match_recipe():
    import click

    from converters.training import TrainingRecipe

    recipe = TrainingRecipe()
    command = main.commands["train"]
    context = click.Context(command)
    defaults = {parameter.name: parameter.get_default(context) for parameter in command.params}
    assert defaults["architecture"] == recipe.architecture.value
    assert defaults["weights"] == "none"
    assert recipe.weights is None
    assert defaults["no_augment"] is (not recipe.augment)
    for field in dataclasses.fields(TrainingRecipe):
        if field.name in defaults and field.name not in ("architecture", "weights"):
            assert defaults[field.name] == getattr(recipe, field.name), field.name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--arch", "mobilenetv2", "--weights", "/nonexistent/weights.h5"], "weight file /nonexistent/weights.h5 not found"),
        (["--arch", "cnn", "--weights", "imagenet"], "applies to --arch mobilenetv2 only"),
        (["--target-sensitivity", "1.5"], "Invalid value for '--target-sensitivity'"),
        (["--target-sensitivity", "nan"], "is not a finite number"),
        (["--arch", "cnn", "--finetune-learning-rate", "0.001"], "--finetune-learning-rate applies to --arch mobilenetv2"),
        (["--initial-model", "/nonexistent/start.keras"], "invalid --initial-model '/nonexistent/start.keras'"),
        (["--initial-model", ""], "invalid --initial-model '': file not found"),
    ],
)
def test_train_usage_errors(labelled_split, tmp_path, extra, message):
    _, split_file = labelled_split
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), *extra]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert message in result.output


def _conv_kernels(path):
    from converters.tf import keras

    model = keras.models.load_model(path, compile=False)
    return [layer.get_weights()[0] for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_train_initial_model_weights(trained, tmp_path):
    from edgefrac.dataset import file_sha256

    model, _, split_file, _ = trained
    output = tmp_path / "continued.keras"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(output), "--resolution", "32",
        "--epochs", "1", "--batch-size", "8", "--learning-rate", "1e-9", "--initial-model", str(model),
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    record = json.loads(output.with_suffix(".json").read_text())
    initial_record = json.loads(model.with_suffix(".json").read_text())
    assert record["initial_model"]["file"] == model.name
    assert record["initial_model"]["sha256"] == file_sha256(model)
    assert record["initial_model"]["recipe"] == initial_record["recipe"]
    assert record["initial_model"]["epochs"] == len(initial_record["history"])
    assert record["recipe"]["initial_model"] == str(model)
    # Adam moves a weight by about the learning rate per step, so one short epoch at 1e-9 keeps the kernels
    # within 1e-6 of the initial model's, while an independent random initialization differs by far more.
    for start, end in zip(_conv_kernels(model), _conv_kernels(output), strict=True):
        assert np.allclose(start, end, rtol=0.0, atol=1e-6)


def test_train_initial_model_mismatch(trained, tmp_path):
    model, _, split_file, _ = trained
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), "--resolution", "48",
        "--epochs", "1", "--initial-model", str(model),
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert "takes 32x32 inputs but this run trains at 48x48; pass --resolution 32" in result.output


def test_train_initial_model_not_keras(labelled_split, tmp_path):
    _, split_file = labelled_split
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), "--initial-model", str(junk)]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert f"invalid initial model {junk}: not a readable Keras model" in result.output
    assert "Traceback" not in result.output


def test_initial_weights_mismatch_named():
    from converters import architectures
    from converters.training import _load_initial_weights
    from edgefrac.errors import UsageError

    ours = architectures.build_custom_cnn(32)
    theirs = architectures.build_custom_cnn(48)
    with pytest.raises(UsageError, match=r"has shape \(4608, 256\) where .* needs \(2048, 256\)"):
        _load_initial_weights(ours, theirs, "theirs.keras")


def test_train_initial_model_broken_record(trained, tmp_path):
    import shutil

    from edgefrac.dataset import file_sha256

    model, _, split_file, _ = trained
    start = tmp_path / "start.keras"
    shutil.copy(model, start)
    start.with_suffix(".json").write_text("{not json")
    output = tmp_path / "continued.keras"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(output), "--resolution", "32",
        "--epochs", "1", "--batch-size", "8", "--initial-model", str(start),
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["initial_model"] == {"file": "start.keras", "sha256": file_sha256(start)}


def test_train_output_suffix(labelled_split, tmp_path):
    _, split_file = labelled_split
    result = CliRunner().invoke(main, ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.h5")])
    assert result.exit_code == 2
    assert "must end in .keras" in result.output


def test_train_weights_file_loads():
    if not MOBILENET_035_WEIGHTS.is_file():
        pytest.skip(f"MobileNetV2 0.35 weight file not found at {MOBILENET_035_WEIGHTS}")
    import h5py

    from converters.architectures import build_mobilenet_v2
    from converters.tf import keras
    from edgefrac.cli.dev import resolve_weights

    weights = resolve_weights(str(MOBILENET_035_WEIGHTS), "mobilenetv2")
    keras.utils.set_random_seed(3)
    _, loaded = build_mobilenet_v2(96, alpha=0.35, weights=weights)
    keras.utils.set_random_seed(3)
    _, random = build_mobilenet_v2(96, alpha=0.35, weights=None)
    with h5py.File(MOBILENET_035_WEIGHTS, "r") as handle:
        stored = np.asarray(handle["Conv1/Conv1/kernel:0"])
    kernel = loaded.get_layer("Conv1").get_weights()[0]
    assert np.array_equal(kernel, stored)
    assert not np.allclose(random.get_layer("Conv1").get_weights()[0], stored)


def test_train_without_tensorflow(tmp_path):
    # A None entry in sys.modules makes `import tensorflow` raise ImportError.
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None\n"
        "from edgefrac.cli import main\n"
        f"main(['train', '--split-file', {str(tmp_path / 's.json')!r}, '--output', {str(tmp_path / 'm.keras')!r}])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install 'edgefrac[convert]'" in result.stderr


def _write_split_copy(split_file, path, edit):
    """Write a copy of ``split_file`` with ``edit(entry)`` applied to every entry."""
    data = json.loads(split_file.read_text())
    for entry in data["entries"]:
        edit(entry)
    path.write_text(json.dumps(data))
    return path


def _weights_of(path):
    from converters.tf import keras

    return keras.models.load_model(path, compile=False).get_weights()


def test_train_augmented_reproducible(labelled_split, tmp_path):
    _, split_file = labelled_split
    models = []
    for name in ("first", "second"):
        model = tmp_path / name / "aug.keras"
        arguments = [
            "train", "--split-file", str(split_file), "--output", str(model), "--resolution", "32",
            "--epochs", "2", "--batch-size", "8", "--seed", "5",
        ]
        result = CliRunner().invoke(main, arguments)
        assert result.exit_code == 0, result.output
        models.append(model)

    first, second = (_weights_of(model) for model in models)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    histories = [json.loads(model.with_suffix(".json").read_text())["history"] for model in models]
    assert histories[0] == histories[1]


def test_train_rejects_record_over_split(labelled_split, tmp_path):
    import shutil

    _, split_file = labelled_split
    split_copy = tmp_path / "g5.json"
    shutil.copy(split_file, split_copy)
    before = split_copy.read_bytes()
    result = CliRunner().invoke(main, ["train", "--split-file", str(split_copy), "--output", str(tmp_path / "g5.keras")])

    assert result.exit_code == 2
    assert f"would write its training record to {split_copy}, which is the --split-file" in result.output
    assert split_copy.read_bytes() == before
    assert not (tmp_path / "g5.keras").exists()


def test_train_rejects_record_over_other_file(labelled_split, tmp_path):
    _, split_file = labelled_split
    other = tmp_path / "other.json"
    other.write_text('{"notes": "not a training record"}')
    result = CliRunner().invoke(main, ["train", "--split-file", str(split_file), "--output", str(tmp_path / "other.keras")])

    assert result.exit_code == 2
    assert "which exists and is not a training record" in result.output
    assert other.read_text() == '{"notes": "not a training record"}'


@pytest.mark.parametrize("option", ["--learning-rate", "--finetune-learning-rate", "--alpha"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_train_rejects_non_finite_rates(labelled_split, tmp_path, option, value):
    _, split_file = labelled_split
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), option, value]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert "is not a finite number" in result.output


@pytest.mark.parametrize("option", ["--learning-rate", "--finetune-learning-rate"])
@pytest.mark.parametrize(("value", "shown"), [("0", "0.0"), ("-0.001", "-0.001")])
def test_train_rejects_learning_rate_not_positive(labelled_split, tmp_path, option, value, shown):
    _, split_file = labelled_split
    output = tmp_path / "m.keras"
    arguments = ["train", "--split-file", str(split_file), "--output", str(output), "--arch", "mobilenetv2", option, value]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert f"Invalid value for '{option}': {shown} is not in the range x>0.0." in result.output
    assert not output.exists()


def _move_fractured_validation(entry):
    if entry["split"] == "validation" and entry["label"] == 1:
        entry["split"] = "train"


def _move_validation(entry):
    if entry["split"] == "validation":
        entry["split"] = "train"


def _drop_non_fractured_training(entry):
    if entry["split"] == "train" and entry["label"] == 0:
        entry["split"] = "test"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_non_fractured_training, "the training images of split file .* contain \\d+ fractured and 0 non-fractured"),
        (_move_validation, "the validation images of split file .* contain 0 fractured and 0 non-fractured"),
        (_move_fractured_validation, "the validation images of split file .* contain 0 fractured and \\d+ non-fractured"),
    ],
)
def test_train_rejects_one_class_split(labelled_split, tmp_path, edit, message):
    import re

    _, split_file = labelled_split
    edited = _write_split_copy(split_file, tmp_path / "edited.json", edit)
    result = CliRunner().invoke(main, ["train", "--split-file", str(edited), "--output", str(tmp_path / "m.keras")])

    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "make a new split with edgefrac split" in result.output
    assert "decoded" not in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch-size", "0"),
        ("--max-train-images", "-50"),
        ("--max-train-images", "0"),
        ("--max-train-images", "1"),
        ("--resolution", "0"),
        ("--resolution", "16"),
        ("--epochs", "-1"),
        ("--finetune-epochs", "-1"),
        ("--finetune-layers", "-1"),
        ("--learning-rate", "-1"),
        ("--learning-rate", "0"),
        ("--finetune-learning-rate", "-0.5"),
        ("--finetune-learning-rate", "0"),
        ("--patience", "-1"),
        ("--alpha", "0"),
    ],
)
def test_train_option_ranges(labelled_split, tmp_path, option, value):
    _, split_file = labelled_split
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), option, value]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output


def test_train_epochs_zero_trains_nothing(labelled_split, tmp_path):
    _, split_file = labelled_split
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), "--epochs", "0"]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert "invalid --epochs 0" in result.output
    assert "the run would train nothing" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--finetune-epochs", "2", "--finetune-layers", "3"], "apply to --arch mobilenetv2 only"),
        (["--arch", "mobilenetv2", "--epochs", "0", "--finetune-epochs", "2"], "needs both --finetune-epochs"),
        (["--arch", "mobilenetv2", "--finetune-layers", "4"], "needs both --finetune-epochs"),
    ],
)
def test_train_finetune_options_checked(labelled_split, tmp_path, extra, message):
    _, split_file = labelled_split
    arguments = ["train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), *extra]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2
    assert message in result.output


def test_training_subset_stratified():
    from converters.training import training_subset
    from edgefrac.splitfile import SplitEntry

    # Sorted by id, the first 10 entries are all fractured.
    entries = [
        SplitEntry(image_id=f"a{index:03d}.png", relative_path=f"a{index:03d}.png", label=1, region=region, split="train",
            hardware=False, sha256=f"{index:064x}", decodes_fully=True)
        for index, region in enumerate(["hand"] * 6 + ["leg"] * 4)
    ] + [
        SplitEntry(image_id=f"b{index:03d}.png", relative_path=f"b{index:03d}.png", label=0, region="hand", split="train",
            hardware=False, sha256=f"{index + 100:064x}", decodes_fully=True)
        for index in range(30)
    ]
    chosen = training_subset(entries, 8, seed=1)

    assert len(chosen) == 8
    assert sum(entry.label for entry in chosen) == 2
    assert {entry.region for entry in chosen if entry.label} == {"hand", "leg"}
    assert chosen == training_subset(entries, 8, seed=1)
    assert training_subset(entries, 2, seed=1)[0].label != training_subset(entries, 2, seed=1)[1].label
    assert training_subset(entries, None, seed=1) == entries


def test_train_max_images_records_used_ids(labelled_split, tmp_path):
    from converters.split import read_split
    from edgefrac.splitfile import ids_sha256

    _, split_file = labelled_split
    model = tmp_path / "few.keras"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(model), "--resolution", "32",
        "--epochs", "1", "--batch-size", "8", "--no-augment", "--max-train-images", "6",
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    record = json.loads(model.with_suffix(".json").read_text())
    split = read_split(split_file)
    assert record["training_images"] == 6
    assert record["split_ids_sha256"]["train"] == split.ids_hash(split.subset("train"))
    assert record["training_ids_sha256"] != record["split_ids_sha256"]["train"]
    assert "training on 6 of the training images" in result.stderr
    from converters.training import training_subset

    used = training_subset(split.subset("train", decodable_only=True), 6, seed=1234)
    assert record["training_ids_sha256"] == ids_sha256(entry.image_id for entry in used)
    assert {entry.label for entry in used} == {0, 1}


MOBILENET_05_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"


def test_train_weights_wrong_alpha(labelled_split, tmp_path):
    if not MOBILENET_05_WEIGHTS.is_file():
        pytest.skip(f"MobileNetV2 0.5 weight file not found at {MOBILENET_05_WEIGHTS}")
    _, split_file = labelled_split
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(tmp_path / "m.keras"), "--arch", "mobilenetv2",
        "--weights", str(MOBILENET_05_WEIGHTS), "--alpha", "0.35", "--resolution", "32", "--epochs", "1",
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 2, result.output
    # The recipe records the weight file with links resolved, and the message names that path.
    assert f"weight file {MOBILENET_05_WEIGHTS.resolve()} is for alpha 0.5, not --alpha 0.35" in result.output
    assert "decoded" not in result.output
    assert "Traceback" not in result.output


def test_best_epoch_kept_across_phases():
    from converters.architectures import build_custom_cnn
    from converters.training import BestEpoch

    model = build_custom_cnn(32)
    best = BestEpoch()
    best.set_model(model)
    best.phase = "head"
    best.on_epoch_end(0, {"val_auc": 0.6})
    head_weights = [np.array(w) for w in model.get_weights()]
    model.set_weights([w + 1.0 for w in head_weights])
    best.phase = "finetune"
    best.on_epoch_end(0, {"val_auc": 0.4})
    best.on_epoch_end(1, {"val_auc": float("nan")})
    best.restore()

    assert best.epoch == {"phase": "head", "epoch": 1, "val_auc": 0.6}
    for restored, expected in zip(model.get_weights(), head_weights, strict=True):
        assert np.array_equal(restored, expected)


def test_train_mobilenet_records_best_epoch(labelled_split, tmp_path):
    from converters.evaluation import load_keras_model

    _, split_file = labelled_split
    model = tmp_path / "mb.keras"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(model), "--arch", "mobilenetv2",
        "--resolution", "32", "--epochs", "1", "--finetune-epochs", "1", "--finetune-layers", "10",
        "--batch-size", "16", "--no-augment",
    ]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == 0, result.output
    record = json.loads(model.with_suffix(".json").read_text())
    phases = [entry["phase"] for entry in record["history"]]
    assert phases == ["head", "finetune"]
    best = max(record["history"], key=lambda entry: entry["val_auc"])
    assert record["best_epoch"]["val_auc"] == pytest.approx(best["val_auc"])
    assert record["best_epoch"]["phase"] == best["phase"]
    assert load_keras_model(model).model is not None


def _copy_trained(trained, tmp_path):
    """Copy the module's trained model and its record, so a test may rewrite the record."""
    model, _, split_file, _ = trained
    copy = tmp_path / "copy.keras"
    copy.write_bytes(model.read_bytes())
    copy.with_suffix(".json").write_text(model.with_suffix(".json").read_text())
    return copy, split_file


def test_threshold_command_rechooses_with_mirror_views(trained, tmp_path):
    from converters.evaluation import load_keras_model
    from converters.pixels import load_entries
    from converters.split import read_split
    from edgefrac import metrics
    from edgefrac.drift import logit
    from edgefrac.tta import TestTimeAugmentation, sigmoid

    model, split_file = _copy_trained(trained, tmp_path)
    before = json.loads(model.with_suffix(".json").read_text())
    assert before["test_time_augmentation"] == "none"
    arguments = [
        "threshold", str(model), "--split-file", str(split_file), "--test-time-augmentation", "horizontal_flip",
        "--target-sensitivity", "0.8",
    ]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output

    record = json.loads(model.with_suffix(".json").read_text())
    assert record["test_time_augmentation"] == "horizontal_flip"
    assert record["previous_thresholds"][-1]["threshold"] == before["threshold"]
    assert record["previous_thresholds"][-1]["test_time_augmentation"] == "none"
    assert record["recipe"] == before["recipe"]
    loaded = load_keras_model(model)
    assert loaded.test_time_augmentation is TestTimeAugmentation.HORIZONTAL_FLIP
    split = read_split(split_file)
    pixels, labels, _ = load_entries(split, split.subset("validation", decodable_only=True), loaded.preprocessing)
    scaled = loaded.preprocessing.scaling.apply(pixels)
    original = loaded.model.predict(scaled, verbose=0).reshape(-1)
    mirrored = loaded.model.predict(scaled[:, :, ::-1, :], verbose=0).reshape(-1)
    assert not np.allclose(original, mirrored), "the mirror images must score differently for this test"
    combined = sigmoid((logit(original) + logit(mirrored)) / 2)
    assert record["threshold"]["value"] == pytest.approx(metrics.threshold_for_sensitivity(combined, labels, 0.8))
    assert record["threshold"]["target_sensitivity"] == 0.8
    assert record["validation_auc"] == pytest.approx(metrics.roc_auc(combined, labels))
    assert f"-> {record['threshold']['value']:.4f} (test-time augmentation horizontal_flip)" in result.stdout

    again = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])
    assert again.exit_code == 0, again.output
    rechosen = json.loads(model.with_suffix(".json").read_text())
    assert rechosen["test_time_augmentation"] == "horizontal_flip"
    assert rechosen["threshold"]["target_sensitivity"] == 0.8
    assert len(rechosen["previous_thresholds"]) == 2


def test_threshold_command_errors(trained, tmp_path):
    model, split_file = _copy_trained(trained, tmp_path)
    record_path = model.with_suffix(".json")
    record = json.loads(record_path.read_text())

    record_path.write_text(json.dumps({**record, "test_time_augmentation": "rotate"}))
    unknown = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])
    assert unknown.exit_code == 2
    assert "test-time augmentation 'rotate' is unknown" in unknown.output

    record_path.unlink()
    missing = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])
    assert missing.exit_code == 2
    assert f"no training record with a threshold and preprocessing at {record_path}" in missing.output

    other = tmp_path / "model.h5"
    other.write_bytes(b"x")
    wrong_suffix = CliRunner().invoke(main, ["threshold", str(other), "--split-file", str(split_file)])
    assert wrong_suffix.exit_code == 2
    assert "expected a .keras model" in wrong_suffix.output


def test_train_records_test_time_augmentation(labelled_split, tmp_path):
    _, split_file = labelled_split
    model = tmp_path / "flip.keras"
    arguments = [
        "train", "--split-file", str(split_file), "--output", str(model), "--resolution", "32", "--epochs", "1",
        "--batch-size", "8", "--test-time-augmentation", "horizontal_flip",
    ]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    record = json.loads(model.with_suffix(".json").read_text())
    assert record["test_time_augmentation"] == "horizontal_flip"
    assert "test_time_augmentation" not in record["recipe"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda record: "not json", "is not valid JSON"),
        (lambda record: [1, 2], "contains a JSON list, not an object"),
        (lambda record: {**record, "threshold": {"target_sensitivity": 0.9}}, "threshold value null is not a probability"),
        (lambda record: {**record, "previous_thresholds": "ab"}, 'previous_thresholds "ab" is not a list'),
        (
            lambda record: {**record, "threshold": {**record["threshold"], "target_sensitivity": "abc"}},
            'target_sensitivity "abc" is not in (0, 1]',
        ),
    ],
)
def test_threshold_command_damaged_record(trained, tmp_path, edit, message):
    model, split_file = _copy_trained(trained, tmp_path)
    record_path = model.with_suffix(".json")
    damaged = edit(json.loads(record_path.read_text()))
    record_path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    before = record_path.read_text()

    result = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert record_path.read_text() == before


def test_threshold_option_repairs_unknown_views(trained, tmp_path):
    model, split_file = _copy_trained(trained, tmp_path)
    record_path = model.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "test_time_augmentation": None}))

    rejected = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])
    assert rejected.exit_code == 2
    assert "test-time augmentation null is unknown" in rejected.output

    arguments = ["threshold", str(model), "--split-file", str(split_file), "--test-time-augmentation", "none"]
    repaired = CliRunner().invoke(main, arguments)
    assert repaired.exit_code == 0, repaired.output
    rewritten = json.loads(record_path.read_text())
    assert rewritten["test_time_augmentation"] == "none"
    assert rewritten["previous_thresholds"][-1]["test_time_augmentation"] is None


def test_threshold_unwritable_record_unchanged(trained, tmp_path):
    model, split_file = _copy_trained(trained, tmp_path)
    record_path = model.with_suffix(".json")
    before = record_path.read_text()
    # A folder where the temporary record would go makes the write fail, for root as for anyone.
    (tmp_path / ".copy.json.tmp").mkdir()

    result = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])

    assert result.exit_code == 1, result.output
    assert f"cannot write training record {record_path}" in result.output
    assert record_path.read_text() == before


def test_threshold_input_size_mismatch(trained, tmp_path):
    model, split_file = _copy_trained(trained, tmp_path)
    record_path = model.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record["preprocessing"] = {**record["preprocessing"], "height": 48, "width": 48}
    record_path.write_text(json.dumps(record))

    result = CliRunner().invoke(main, ["threshold", str(model), "--split-file", str(split_file)])

    assert result.exit_code == 2, result.output
    assert "is for 48x48 inputs" in result.output


def test_threshold_missing_data_folder(trained, tmp_path):
    model, split_file = _copy_trained(trained, tmp_path)
    arguments = ["threshold", str(model), "--split-file", str(split_file), "--data", str(tmp_path / "absent")]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert "does not exist" in result.output
