"""Folding batch normalizations after ReLU layers keeps the function and balances int8 ranges."""

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
    assert len(folded.layers) == len(logit.layers) - 1


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
    assert len(exported.layers) == len(model.layers) - 1


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


def _conv_model(keras, negative_gain_block: int | None = None):
    """The custom CNN at 32x32 with batch-norm statistics like a trained one: gains 0.05 to 30."""
    from converters import architectures

    keras.utils.set_random_seed(5)
    model = architectures.build_custom_cnn(32)
    rng = np.random.default_rng(1)
    batchnorms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for block, layer in enumerate(batchnorms):
        channels = layer.get_weights()[0].size
        gamma = np.geomspace(0.05, 30.0, channels).astype(np.float32)
        rng.shuffle(gamma)
        if block == negative_gain_block:
            gamma[0] = -gamma[0]
        beta = rng.normal(0, 0.5, channels).astype(np.float32)
        mean = np.abs(rng.normal(0, 0.3, channels)).astype(np.float32)
        variance = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        layer.set_weights([gamma, beta, mean, variance])
    return architectures.logit_model(model)


def _conv_inputs(seed: int, count: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 32, 32, 3), dtype=np.float32)


def test_fold_conv_blocks_keeps_logits():
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    logit = _conv_model(keras)
    folded = fold_batchnorm_after_relu(logit)

    expected = logit.predict(_conv_inputs(1), verbose=0)
    difference = np.abs(expected - folded.predict(_conv_inputs(1), verbose=0))
    assert difference.max() < 1e-3 * max(1.0, np.abs(expected).max())
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    # The offsets of blocks 1 and 2 stay as 1x1 depthwise layers because the next convolution
    # pads with zeros. Block 3's offset moves into the dense bias, and the head's into the logit.
    offsets = [layer for layer in folded.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert len(offsets) == 2
    for layer in offsets:
        kernel, _ = layer.get_weights()
        assert np.all(kernel == 1.0)
    # The original model is untouched, so folding it again gives the same result.
    again = fold_batchnorm_after_relu(logit)
    assert again is not logit
    assert np.allclose(again.predict(_conv_inputs(1), verbose=0), folded.predict(_conv_inputs(1), verbose=0))


def test_fold_conv_negative_gain_kept():
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    logit = _conv_model(keras, negative_gain_block=1)
    folded = fold_batchnorm_after_relu(logit)

    expected = logit.predict(_conv_inputs(2), verbose=0)
    difference = np.abs(expected - folded.predict(_conv_inputs(2), verbose=0))
    assert difference.max() < 1e-3 * max(1.0, np.abs(expected).max())
    batchnorms = [layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batchnorms) == 1
    assert np.any(batchnorms[0].get_weights()[0] < 0)


def test_int8_folded_cnn_has_no_batchnorm_multiply():
    # Unfolded, each batch normalization after a ReLU becomes an int8 MUL and ADD.
    # After the fold, only the offsets that cannot move stay, as depthwise convolutions.
    from converters import flatbuffer_edit
    from converters.tf import keras
    from converters.tflite import convert

    logit = _conv_model(keras)
    tflite = convert(logit, "int8", representative_inputs=_conv_inputs(3, 32), output_kind="logit")
    model = flatbuffer_edit.read(tflite)
    ops = [flatbuffer_edit.op_name(model, op) for op in model.subgraphs[0].operators]

    assert "MUL" not in ops
    assert ops.count("DEPTHWISE_CONV_2D") == 2
    assert ops.count("CONV_2D") == 3


def test_fold_skips_offset_without_bias():
    # The offset of a dense batch norm needs the next layer's bias. Without one there is no
    # place for it, so the model converts unfolded.
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    inputs = keras.Input(shape=(8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(16, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="logit")(x))

    assert fold_batchnorm_after_relu(model) is model


def _odd_chain(case: str):
    from converters.tf import keras

    layers = keras.layers
    keras.utils.set_random_seed(17)
    if case == "dynamic size":
        inputs = keras.Input(shape=(None, None, 3))
    elif case == "channels first":
        inputs = keras.Input(shape=(3, 16, 16))
    else:
        inputs = keras.Input(shape=(16, 16, 4))
    if case == "channels first":
        x = layers.Conv2D(4, 3, activation="relu", data_format="channels_first")(inputs)
        x = layers.BatchNormalization(axis=-1)(x)
    else:
        x = layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
        x = layers.BatchNormalization(center=case != "no center", scale=case != "no scale")(x)
    if case == "grouped valid":
        x = layers.Conv2D(4, 3, groups=2)(x)
    elif case == "name clash":
        x = layers.Dropout(0.1, name="c2_input_offset")(x)
        x = layers.Conv2D(4, 3, padding="same", name="c2")(x)
    elif case == "dynamic size":
        return keras.Model(inputs, layers.Conv2D(1, 3, name="logit")(x))
    return keras.Model(inputs, layers.Dense(1, name="logit")(layers.Flatten()(x)))


@pytest.mark.parametrize(
    "case", ["no center", "no scale", "grouped valid", "name clash", "channels first", "dynamic size"]
)
def test_fold_odd_chains(case):
    # Each case either folds to the same function or is left as it is, and none raises.
    from converters.folding import fold_batchnorm_after_relu
    from converters.tf import keras

    model = _odd_chain(case)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(np.random.default_rng(2).normal(0, 0.5, channels).astype(np.float32))
    folded = fold_batchnorm_after_relu(model)

    if case in ("channels first", "dynamic size"):
        assert folded is model
        return
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    sample = np.random.default_rng(3).random((2, *model.inputs[0].shape[1:]), dtype=np.float32)
    expected = model.predict(sample, verbose=0)
    assert np.abs(expected - folded.predict(sample, verbose=0)).max() < 1e-3 * max(1.0, np.abs(expected).max())
