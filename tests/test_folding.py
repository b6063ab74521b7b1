"""Folding a batch normalization after a ReLU dense layer keeps the function and balances int8 ranges."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _head_model(keras, negative_gain: bool = False):
    """A dense head whose raw channel outputs span 1e-2..1e2 and whose batch norm evens them out.

    The trained custom CNN has this shape: batch-norm gains from 0.014 to 21.
    """
    from converters import architectures

    keras.utils.set_random_seed(3)
    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    logit = keras.layers.Dense(1, name=architectures.LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(logit)
    model = keras.Model(inputs, probability)
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    batchnorm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    channel_scale = np.geomspace(100.0, 0.01, 16).astype(np.float32)
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * channel_scale, np.abs(bias) * channel_scale])
    rng = np.random.default_rng(0)
    gamma = (1.0 / channel_scale).astype(np.float32)
    if negative_gain:
        gamma[0] = -gamma[0]
    beta = rng.normal(0, 0.5, 16).astype(np.float32)
    batchnorm.set_weights([gamma, beta, np.zeros(16, np.float32), np.ones(16, np.float32)])
    return model


def _inputs(seed: int, count: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 8, 8, 3), dtype=np.float32)


def test_fold_keeps_logits():
    from converters import architectures
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    logit = architectures.logit_model(_head_model(keras))
    folded = fold_batchnorm_after_relu(logit)

    difference = np.abs(logit.predict(_inputs(1), verbose=0) - folded.predict(_inputs(1), verbose=0))
    assert difference.max() < 1e-3
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert len(folded.layers) == len(logit.layers) - 2


def test_fold_skips_negative_gains():
    from converters import architectures
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    logit = architectures.logit_model(_head_model(keras, negative_gain=True))

    assert fold_batchnorm_after_relu(logit) is logit


def test_fold_leaves_other_models_unchanged(tiny_keras_model):
    from converters import architectures
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    logit = architectures.logit_model(keras.models.load_model(tiny_keras_model))

    assert fold_batchnorm_after_relu(logit) is logit


def test_export_probability_keeps_sigmoid():
    from converters.tf import keras
    from converters.tflite import export_model
    from edgefrac.card import OutputKind

    model = _head_model(keras)
    exported = export_model(model, OutputKind.PROBABILITY)

    difference = np.abs(model.predict(_inputs(2), verbose=0) - exported.predict(_inputs(2), verbose=0))
    assert difference.max() < 1e-4
    assert len(exported.layers) == len(model.layers) - 2


def test_int8_folded_head_tracks_float():
    # Without the fold, channels with small raw outputs share one int8 scale with
    # the largest ones and round to zero. With the fold, int8 follows the float logits.
    from converters import architectures
    from converters.tf import keras
    from converters.tflite import convert
    from edgefrac.classifier import tensor_quantization
    from edgefrac.quantization import dequantize, quantize
    from edgefrac.runtime import make_interpreter

    model = _head_model(keras)
    representative = _inputs(4, 64)
    tflite = convert(model, "int8", representative_inputs=representative, output_kind="logit")
    interpreter = make_interpreter(tflite, threads=1)
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    source = tensor_quantization(input_detail)
    target = tensor_quantization(output_detail)

    samples = _inputs(5, 40)
    int8_logits = []
    for sample in samples:
        interpreter.set_tensor(input_detail["index"], quantize(sample[np.newaxis], source.scale, source.zero_point, np.int8))
        interpreter.invoke()
        int8_logits.append(dequantize(interpreter.get_tensor(output_detail["index"]), target.scale, target.zero_point)[0, 0])
    float_logits = architectures.logit_model(model).predict(samples, verbose=0).reshape(-1)

    assert np.corrcoef(float_logits, int8_logits)[0, 1] > 0.95
