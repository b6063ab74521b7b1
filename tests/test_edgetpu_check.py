"""edgetpu-check on real converted models: types, shapes, unsupported ops and the split point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgefrac.cli import main
from edgefrac.edgetpu_check import SUPPORTED_OPS, check_model
from edgefrac.modelfile import load_model


@pytest.fixture(scope="module")
def leaky_relu_tflite(tmp_path_factory):
    """An int8 model whose second op, LEAKY_RELU, is not in the Edge TPU's list."""
    from converters.tf import keras
    from converters.tflite import convert

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(1, name="logit")(x)
    model = keras.Model(inputs, keras.layers.Activation("sigmoid", name="probability")(x))
    representative = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    tflite = convert(model, "int8", representative_inputs=representative, output_kind="logit")
    path = tmp_path_factory.mktemp("edgetpu") / "leaky.tflite"
    path.write_bytes(tflite)
    return path


def test_tiny_int8_compatible(tiny_int8_model):
    report = check_model(load_model(tiny_int8_model).tflite)
    assert report.compatible
    assert report.first_unsupported is None
    assert report.mapped_op_count == len(report.ops)
    assert not report.already_compiled


def test_tiny_int8_op_names(tiny_int8_model):
    report = check_model(load_model(tiny_int8_model).tflite)
    assert [op.name for op in report.ops] == ["CONV_2D", "MAX_POOL_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]


def test_float_model_tensor_problems(tiny_float_tflite):
    report = check_model(tiny_float_tflite.read_bytes())
    assert not report.compatible
    problems = " ".join(problem.problem for problem in report.tensor_problems)
    assert "activation tensor is float32" in problems
    assert "constant tensor is float32" in problems


def test_unsupported_op_split(leaky_relu_tflite):
    report = check_model(leaky_relu_tflite.read_bytes())
    assert "LEAKY_RELU" not in SUPPORTED_OPS
    assert report.first_unsupported is not None
    assert report.first_unsupported.name == "LEAKY_RELU"
    assert report.first_unsupported.index == 1
    assert report.mapped_op_count == 1
    assert not report.compatible


def test_unreadable_model():
    from edgefrac.errors import ModelFileError

    with pytest.raises(ModelFileError, match="cannot read the model"):
        check_model(b"TFL3" + b"\x00" * 64)


def test_cli_missing_model_is_usage_error(tmp_path):
    missing = tmp_path / "absent.efm"
    result = CliRunner().invoke(main, ["edgetpu-check", str(missing)])
    assert result.exit_code == 2, result.output
    assert "'MODEL'" in result.stderr
    assert "does not exist" in result.stderr
    assert "--model" not in result.stderr


def test_cli_compatible(tiny_int8_model):
    result = CliRunner().invoke(main, ["edgetpu-check", str(tiny_int8_model)])
    assert result.exit_code == 0, result.output
    assert "edgetpu_compiler" in result.output


def test_cli_efm_export_step(tiny_int8_model):
    result = CliRunner().invoke(main, ["edgetpu-check", str(tiny_int8_model)])
    tflite = tiny_int8_model.with_suffix(".tflite")
    assert f"edgefrac export {tiny_int8_model} {tflite} && edgetpu_compiler --show_operations {tflite}" in result.output


def test_cli_tflite_compile_step(tiny_int8_model, tmp_path):
    plain = tmp_path / "model.tflite"
    plain.write_bytes(load_model(tiny_int8_model).tflite)
    result = CliRunner().invoke(main, ["edgetpu-check", str(plain)])
    assert result.exit_code == 0, result.output
    assert f"compile it with: edgetpu_compiler --show_operations {plain}" in result.output
    assert "edgefrac export" not in result.output


def test_cli_split_text(leaky_relu_tflite):
    result = CliRunner().invoke(main, ["edgetpu-check", str(leaky_relu_tflite)])
    assert result.exit_code == 1
    assert "#1 LEAKY_RELU" in result.output
    assert "ops 0-0 (1 of" in result.output


def test_cli_json(leaky_relu_tflite):
    result = CliRunner().invoke(main, ["edgetpu-check", "--json", str(leaky_relu_tflite)])
    document = json.loads(result.stdout)
    assert document["compatible"] is False
    assert document["first_unsupported_op"] == {"index": 1, "name": "LEAKY_RELU"}
    assert document["unsupported_ops"] == ["LEAKY_RELU"]
