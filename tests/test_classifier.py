"""FractureClassifier on the tiny converted models: outputs, output kinds, card checks, overrides, plain TFLite."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgefrac import classifier as classifier_module
from edgefrac.card import OutputKind
from edgefrac.card import TensorQuantization
from edgefrac.classifier import FractureClassifier, Overrides, infer_output_kind, sigmoid
from edgefrac.errors import ModelFileError, OutputNotProbabilityError, UsageError
from edgefrac.defaults import default_model_path
from edgefrac.modelfile import LoadedModel, load_model, pack
from edgefrac.preprocessing import ResizeMethod, ValueScaling

REPO_ROOT = Path(__file__).resolve().parent.parent


def random_inputs(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((32, 32, 3), dtype=np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def logit_classifier(tiny_int8_model) -> FractureClassifier:
    return FractureClassifier.from_path(tiny_int8_model, threads=1)


@pytest.fixture(scope="module")
def probability_classifier(tiny_int8_probability_model) -> FractureClassifier:
    return FractureClassifier.from_path(tiny_int8_probability_model, threads=1)


def on_grid(value: float, scale: float, zero_point: int) -> bool:
    level = value / scale + zero_point
    return abs(level - round(level)) < 1e-9


# Outputs


def test_int8_output_varies(logit_classifier):
    raw = {logit_classifier.predict_input(model_input).raw_output for model_input in random_inputs(12)}
    assert len(raw) > 1


def test_int8_tensors(logit_classifier):
    assert logit_classifier.input_tensor.dtype == "int8"
    assert logit_classifier.output_tensor.dtype == "int8"
    assert logit_classifier.input_tensor.is_quantized


def test_logit_probability_is_sigmoid(logit_classifier):
    assert logit_classifier.card.output_kind is OutputKind.LOGIT
    output = logit_classifier.output_tensor
    for model_input in random_inputs(6, seed=1):
        prediction = logit_classifier.predict_input(model_input)
        assert on_grid(prediction.raw_output, output.scale, output.zero_point)
        assert prediction.probability == pytest.approx(1 / (1 + np.exp(-prediction.raw_output)), abs=1e-12)


def test_probability_output_quantization(probability_classifier):
    output = probability_classifier.output_tensor
    assert output.scale == pytest.approx(1 / 256)
    assert output.zero_point == -128


def test_probability_output_levels(probability_classifier):
    for model_input in random_inputs(6, seed=2):
        prediction = probability_classifier.predict_input(model_input)
        assert prediction.probability == prediction.raw_output
        assert on_grid(prediction.raw_output, 1 / 256, -128)
        assert 0.0 <= prediction.probability <= 255 / 256


def test_decision_uses_threshold(logit_classifier):
    prediction = logit_classifier.predict_input(random_inputs(1, seed=3)[0])
    assert prediction.fractured == (prediction.probability >= logit_classifier.threshold)


def test_predict_file(logit_classifier, sample_images):
    prediction = logit_classifier.predict_file(sample_images / "scan0.jpg")
    assert 0.0 <= prediction.probability <= 1.0


def test_sigmoid_extremes():
    # exp(-1000) underflows to 0, which is correct here, so only overflow and NaN count as failures.
    with np.errstate(over="raise", invalid="raise"):
        values = sigmoid([-1000.0, 0.0, 1000.0])
    assert values.tolist() == [0.0, 0.5, 1.0]


# Card and model must agree


def test_card_output_quantization_mismatch(tiny_int8_model):
    model = load_model(tiny_int8_model)
    card = dataclasses.replace(model.card, output=dataclasses.replace(model.card.output, scale=0.5))
    mismatched = dataclasses.replace(model, card=card)
    with pytest.raises(ModelFileError, match="card's output quantization"):
        FractureClassifier(mismatched, threads=1)


def test_card_size_mismatch(tmp_path, tiny_int8_model):
    model = load_model(tiny_int8_model)
    preprocessing = dataclasses.replace(model.card.preprocessing, height=64, width=64)
    card = dataclasses.replace(model.card, preprocessing=preprocessing)
    path = tmp_path / "wrong-size.efm"
    path.write_bytes(pack(model.tflite, card))
    with pytest.raises(ModelFileError, match="preprocessing gives 64x64x3"):
        FractureClassifier.from_path(path, threads=1)


# Overrides: flag beats card, card beats defaults


def test_override_threshold(tiny_int8_model):
    card_threshold = load_model(tiny_int8_model).card.threshold.value
    classifier = FractureClassifier.from_path(tiny_int8_model, threads=1, overrides=Overrides(threshold=0.9))
    assert card_threshold == 0.5
    assert classifier.threshold == 0.9
    assert classifier.card.threshold.chosen_on == "set on the command line"


def test_override_output_kind(tiny_int8_model):
    overrides = Overrides(output_kind=OutputKind.PROBABILITY)
    classifier = FractureClassifier.from_path(tiny_int8_model, threads=1, overrides=overrides)
    raw = classifier.invoke(random_inputs(1)[0])
    assert classifier.card.output_kind is OutputKind.PROBABILITY
    assert not 0.0 <= raw <= 1.0
    with pytest.raises(OutputNotProbabilityError, match=f"model output {raw:g} is not a probability"):
        classifier.predict_input(random_inputs(1)[0])


def test_override_preprocessing(tiny_int8_model):
    overrides = Overrides(scaling=ValueScaling.SYMMETRIC, resize=ResizeMethod.NEAREST)
    classifier = FractureClassifier.from_path(tiny_int8_model, threads=1, overrides=overrides)
    assert classifier.preprocessing.scaling is ValueScaling.SYMMETRIC
    assert classifier.preprocessing.resize is ResizeMethod.NEAREST
    assert classifier.preprocessing.height == 32


def test_card_values_without_overrides(logit_classifier, tiny_int8_model):
    card = load_model(tiny_int8_model).card
    assert logit_classifier.preprocessing == card.preprocessing
    assert logit_classifier.threshold == card.threshold.value


def test_override_size_mismatch(tiny_int8_model):
    with pytest.raises(UsageError, match="drop the --height/--width flags"):
        FractureClassifier.from_path(tiny_int8_model, threads=1, overrides=Overrides(height=64, width=64))


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_override_rejects_threshold(threshold):
    with pytest.raises(UsageError, match="invalid threshold"):
        Overrides(threshold=threshold)


# Plain .tflite without a card


def test_plain_tflite_warns(tiny_float_tflite, caplog):
    with caplog.at_level(logging.WARNING, logger="edgefrac.classifier"):
        classifier = FractureClassifier.from_path(tiny_float_tflite, threads=1)
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "no model card, so no preprocessing contract was found" in messages[0]
    assert "32x32 input" in messages[0]
    assert classifier.card.threshold.value == 0.5


def test_plain_tflite_input_size(tiny_float_tflite):
    classifier = FractureClassifier.from_path(tiny_float_tflite, threads=1)
    assert (classifier.preprocessing.height, classifier.preprocessing.width) == (32, 32)
    assert classifier.preprocessing.channels == 3
    assert classifier.input_tensor.dtype == "float32"


def test_plain_tflite_predicts(tiny_float_tflite, sample_images):
    classifier = FractureClassifier.from_path(tiny_float_tflite, threads=1)
    prediction = classifier.predict_file(sample_images / "scan2.png")
    assert 0.0 <= prediction.probability <= 1.0


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point", "expected"),
    [
        ("int8", 1 / 256, -128, OutputKind.PROBABILITY),
        ("uint8", 1 / 255, 0, OutputKind.PROBABILITY),
        ("int16", 1 / 32768, 0, OutputKind.PROBABILITY),
        ("int8", 0.0832, -10, OutputKind.LOGIT),
        ("uint8", 0.05, 128, OutputKind.LOGIT),
        ("int16", 0.001, 0, OutputKind.LOGIT),
        ("float32", 0.0, 0, OutputKind.PROBABILITY),
    ],
)
def test_output_kind_from_range(dtype, scale, zero_point, expected):
    output = TensorQuantization(dtype=dtype, shape=(1, 1), scale=scale, zero_point=zero_point)
    assert infer_output_kind(output) is expected


def test_plain_int8_probability_inferred(tiny_int8_probability_model, tmp_path):
    plain = tmp_path / "probability.tflite"
    plain.write_bytes(load_model(tiny_int8_probability_model).tflite)
    classifier = FractureClassifier.from_path(plain, threads=1)
    assert classifier.card.output_kind is OutputKind.PROBABILITY


def test_exported_default_inferred_logit(tmp_path, caplog):
    plain = tmp_path / "default.tflite"
    plain.write_bytes(load_model(default_model_path()).tflite)
    with caplog.at_level(logging.WARNING, logger="edgefrac.classifier"):
        classifier = FractureClassifier.from_path(plain, threads=1)
    assert classifier.card.output_kind is OutputKind.LOGIT
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "logit output (inferred from the int8 output range" in messages[0]


def test_probability_out_of_range_rejected(tiny_float_tflite):
    classifier = FractureClassifier.from_path(tiny_float_tflite, threads=1)
    assert classifier.card.output_kind is OutputKind.PROBABILITY
    with pytest.raises(OutputNotProbabilityError, match="model output -0.5 is not a probability; pass --output-kind logit"):
        classifier.to_probability(-0.5)
    assert classifier.to_probability(1.0) == 1.0


def test_plain_tflite_override_scaling(tiny_float_tflite):
    overrides = Overrides(scaling=ValueScaling.SYMMETRIC)
    classifier = FractureClassifier.from_path(tiny_float_tflite, threads=1, overrides=overrides)
    assert classifier.preprocessing.scaling is ValueScaling.SYMMETRIC


# The load probe runs only for bytes no hash vouches for


@pytest.fixture()
def probe_calls(monkeypatch) -> list[bytes]:
    calls: list[bytes] = []
    real_probe = classifier_module.probe_load

    def recording_probe(model, **options):
        calls.append(model)
        return real_probe(model, **options)

    monkeypatch.setattr(classifier_module, "probe_load", recording_probe)
    return calls


def test_probe_runs_for_plain(tiny_float_tflite, probe_calls):
    FractureClassifier.from_path(tiny_float_tflite, threads=1)
    assert probe_calls == [tiny_float_tflite.read_bytes()]


def test_probe_skipped_for_efm(tiny_int8_model, probe_calls):
    FractureClassifier.from_path(tiny_int8_model, threads=1)
    assert probe_calls == []


def test_probe_disabled(tiny_float_tflite, probe_calls):
    FractureClassifier.from_path(tiny_float_tflite, threads=1, probe=False)
    assert probe_calls == []


def test_unverified_model_probed(tiny_int8_model, probe_calls):
    model = load_model(tiny_int8_model)
    FractureClassifier(LoadedModel(path=model.path, tflite=model.tflite, card=None, sha256=""), threads=1)
    assert len(probe_calls) == 1


# The device side runs without TensorFlow


def test_infer_without_tensorflow(tiny_int8_model, sample_images):
    # None in sys.modules makes `import tensorflow` (and keras) raise ImportError before the CLI loads.
    code = textwrap.dedent(
        """
        import sys
        for name in ("tensorflow", "keras", "tf_keras"):
            sys.modules[name] = None
        from edgefrac.cli import main
        main(sys.argv[1:])
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    environment.pop("EDGEFRAC_RUNTIME", None)
    command = [sys.executable, "-c", code, "infer", str(sample_images), "--model", str(tiny_int8_model), "--json"]
    completed = subprocess.run(command, capture_output=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr.decode()
    document = json.loads(completed.stdout)
    assert document["summary"]["scored"] == 4
    assert document["summary"]["failed"] == 0
    assert [entry["status"] for entry in document["results"]] == ["ok"] * 4
