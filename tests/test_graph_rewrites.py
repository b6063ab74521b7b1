"""Pointwise merging and stem ReLU6 scaling keep the function and skip graphs they cannot handle."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SIZE = 16


def _batchnorm(layer, rng, channels: int, gains=None):
    gamma = np.ones(channels) if gains is None else np.asarray(gains)
    layer.set_weights([
        gamma.astype(np.float32),
        rng.normal(0.2, 0.3, channels).astype(np.float32),
        rng.normal(0, 0.2, channels).astype(np.float32),
        rng.uniform(0.5, 2.0, channels).astype(np.float32),
    ])


def _bottleneck_model(keras, *, residual: bool = False, expand: int = 12, small_channel_gain: float = 1.0):
    """A MobileNetV2-like classifier with its backbone nested as one layer.

    Stem: conv -> BN -> ReLU6 -> depthwise -> BN -> ReLU6; then a linear
    projection to 4 channels read by a 1x1 expansion (the mergeable pair), a
    padded strided depthwise convolution and a second projection. With
    ``residual`` the first projection's output also feeds an add.
    ``small_channel_gain`` shrinks the first two stem channels, as in
    MobileNetV2's stem, where some channels stay far below 6.
    """
    from converters import architectures

    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    image = keras.Input(shape=(SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(image)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="stem_depthwise")(x)
    x = keras.layers.BatchNormalization(name="stem_depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_depthwise_relu")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="project")(x)
    projected = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Conv2D(expand, 1, use_bias=False, name="expand")(projected)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0, name="expand_relu")(x)
    x = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(x)
    x = keras.layers.DepthwiseConv2D(3, strides=2, use_bias=False, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name="depthwise_relu")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="project_2")(x)
    x = keras.layers.BatchNormalization(name="project_2_bn")(x)
    if residual:
        pooled = keras.layers.AveragePooling2D(2, name="skip_pool")(projected)
        x = keras.layers.Add(name="add")([x, pooled])
    backbone = keras.Model(image, x, name="backbone")
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            gains = np.ones(channels)
            if layer.name == "stem_bn":
                gains[:2] = small_channel_gain
            _batchnorm(layer, rng, channels, gains)

    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    logit = keras.layers.Dense(1, name=architectures.LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(logit)
    return keras.Model(inputs, probability)


def _inputs(seed: int, count: int = 16) -> np.ndarray:
    # Smooth images in [-1, 1], flat over large areas like radiographs.
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, SIZE // 4, SIZE // 4, 1))
    return np.repeat(np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2), 3, axis=3).astype(np.float32)


def _layer_names(model) -> list[str]:
    from converters import graph

    return [layer.name for functional in graph.functional_models(model) for layer in functional.layers]


def test_merge_finds_projection_expansion_pair():
    from converters.pointwise_merge import find_pairs
    from converters.tf import keras

    pairs = find_pairs(_bottleneck_model(keras))

    assert [(p.first.name, p.batchnorm.name, p.second.name) for p in pairs] == [("project", "project_bn", "expand")]


def test_merge_keeps_outputs_drops_tensor():
    from converters.pointwise_merge import merge_pointwise_pairs
    from converters.tf import keras

    model = _bottleneck_model(keras)
    merged = merge_pointwise_pairs(model)
    inputs = _inputs(1)

    names = _layer_names(merged)
    assert "project" not in names
    assert "project_bn" not in names
    assert "expand_merged" in names
    np.testing.assert_allclose(merged.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-5)


def test_merge_skips_shared_projection():
    from converters.pointwise_merge import find_pairs, merge_pointwise_pairs
    from converters.tf import keras

    model = _bottleneck_model(keras, residual=True)

    assert find_pairs(model) == []
    assert merge_pointwise_pairs(model) is model


def test_merge_work_ratio(monkeypatch):
    from converters import pointwise_merge
    from converters.tf import keras

    model = _bottleneck_model(keras, expand=12)
    # 8 -> 4 -> 12 channels: 96 merged weights against 32 + 48 = 80, a ratio of 1.2.
    assert pointwise_merge.find_pairs(model)
    monkeypatch.setattr(pointwise_merge, "MAX_WORK_RATIO", 1.0)
    assert pointwise_merge.find_pairs(model) == []


def test_merge_int8_convolution_count():
    from converters import flatbuffer_edit
    from converters.tf import keras
    from converters.tflite import convert

    tflite = convert(_bottleneck_model(keras), "int8", representative_inputs=_inputs(2, 32), output_kind="logit")
    model = flatbuffer_edit.read(tflite)
    ops = [flatbuffer_edit.op_name(model, op) for op in model.subgraphs[0].operators]

    # stem convolution, merged projection + expansion, second projection
    assert ops.count("CONV_2D") == 3


def test_channel_factors():
    from converters.relu6_scaling import channel_factors

    factors = channel_factors(np.array([6.0, 3.0, 0.05, 0.0, 7.0]))

    np.testing.assert_allclose(factors, [1.0, 2.0, 64.0, 1.0, 1.0])


def test_scaling_covers_the_stem_only():
    from converters.relu6_scaling import find_sites
    from converters.tf import keras

    sites = find_sites(_bottleneck_model(keras))

    assert [(s.batchnorm.name, s.relu.name, s.reader.name) for s in sites] == [
        ("stem_bn", "stem_relu", "stem_depthwise"),
        ("stem_depthwise_bn", "stem_depthwise_relu", "project"),
    ]


def test_scaling_keeps_representative_outputs():
    from converters.relu6_scaling import scale_relu6_channels
    from converters.tf import keras

    model = _bottleneck_model(keras, small_channel_gain=0.02)
    inputs = _inputs(3, 32)
    scaled, summary = scale_relu6_channels(model, inputs)

    assert summary.channels >= 2
    assert summary.largest_factor > 2
    np.testing.assert_allclose(scaled.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-5)
    # Each stem channel that stayed below 3 now reaches 6 on these images.
    backbone = model.get_layer("backbone")
    before = keras.Model(backbone.inputs, backbone.get_layer("stem_relu").output).predict(inputs, verbose=0)
    after = keras.Model(scaled.inputs, scaled.get_layer("stem_relu").output).predict(inputs, verbose=0)
    low = (before.max(axis=(0, 1, 2)) > 0) & (before.max(axis=(0, 1, 2)) < 3)
    assert low.any()
    np.testing.assert_allclose(after.max(axis=(0, 1, 2))[low], 6.0, rtol=1e-4)


def test_scaling_skips_model_without_relu6(tiny_keras_model):
    from converters.relu6_scaling import scale_relu6_channels
    from converters.tf import keras

    model = keras.models.load_model(tiny_keras_model, compile=False)
    same, summary = scale_relu6_channels(model, np.zeros((2, *model.inputs[0].shape[1:]), np.float32))

    assert same is model
    assert summary.tensors == 0


def _pointwise_head(keras, x):
    from converters import architectures

    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.layers.Dense(1, name=architectures.LOGIT_LAYER)(x)


def test_merge_chain_of_three():
    from converters.pointwise_merge import merge_pointwise_pairs
    from converters.tf import keras

    image = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 1, name="a")(image)
    x = keras.layers.Conv2D(4, 1, name="b")(x)
    x = keras.layers.Conv2D(4, 1, name="c")(x)
    model = keras.Model(image, _pointwise_head(keras, x))
    merged = merge_pointwise_pairs(model)

    assert merged is not model
    assert "b_merged" in _layer_names(merged)
    assert "c" in _layer_names(merged)
    inputs = _inputs(6, 4)
    np.testing.assert_allclose(merged.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-5)


@pytest.mark.parametrize("case", ["two_outputs", "dict_output", "keyword_call", "unserializable_layer", "shared_layer"])
def test_merge_odd_graphs_keep_outputs(case):
    from converters.pointwise_merge import merge_pointwise_pairs
    from converters.tf import keras

    class Doubler(keras.layers.Layer):
        def __init__(self, function, **kwargs):  # a callable argument: Keras cannot serialize it
            super().__init__(**kwargs)
            self.function = function

        def call(self, x):
            return self.function(x)

    image = keras.Input((SIZE, SIZE, 3))
    x = image
    if case == "unserializable_layer":
        x = Doubler(lambda t: t * 2.0)(x)
    if case == "shared_layer":
        shared = keras.layers.Dense(3)
        x = shared(shared(x))
    x = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.Conv2D(6, 1)(inputs=x) if case == "keyword_call" else keras.layers.Conv2D(6, 1)(x)
    logit = _pointwise_head(keras, x)
    outputs = {"two_outputs": [logit, x], "dict_output": {"logit": logit, "map": x}}.get(case, logit)
    model = keras.Model(image, outputs)

    result = merge_pointwise_pairs(model)
    inputs = _inputs(7, 2)
    expected = model.predict(inputs, verbose=0)
    actual = result.predict(inputs, verbose=0)
    if isinstance(expected, dict):
        expected, actual = expected["logit"], actual["logit"]
    elif isinstance(expected, list):
        expected, actual = expected[0], actual[0]
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_convert_dynamic_input_rejected():
    from converters.tf import keras
    from converters.tflite import convert
    from edgefrac.errors import UsageError

    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 1)(image)
    x = keras.layers.Conv2D(6, 1)(x)
    model = keras.Model(image, _pointwise_head(keras, x))

    with pytest.raises(UsageError, match="not static"):
        convert(model, "int8", representative_inputs=_inputs(8, 2), output_kind="logit")


def test_scaling_stem_in_nested_model():
    from converters.relu6_scaling import find_sites
    from converters.tf import keras

    inner_input = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inner_input)
    y = keras.layers.BatchNormalization(name="inner_bn")(y)
    y = keras.layers.ReLU(6.0)(y)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="inner_depthwise")(y)
    backbone = keras.Model(inner_input, y, name="inner")
    image = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 1, name="outer_projection")(backbone(image))
    x = keras.layers.BatchNormalization(name="outer_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    model = keras.Model(image, _pointwise_head(keras, x))

    assert [site.batchnorm.name for site in find_sites(model)] == ["inner_bn"]
