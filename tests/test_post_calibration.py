"""Post-calibration steps on real TFLite conversions: activation range tuning and bias correction."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SIZE = 16


def _constant_channel_model():
    """A depthwise channel that is constant, read by a 1x1 convolution that multiplies it by 40.

    This is the MobileNetV2 pattern bias correction exists for: the constant
    rounds to the nearest int8 level and the large weight turns that rounding
    into a shift of the next layer's output.
    """
    from converters.tf import keras

    keras.utils.set_random_seed(11)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise")
    x = depthwise(inputs)
    kernel, bias = depthwise.get_weights()
    kernel[..., 2, 0] = 0.0  # channel 2 ignores its input ...
    bias[2] = 1.01373  # ... and always outputs this value, which is off the int8 grid.
    kernel[..., :2, 0] = 0.5  # The other channels reach about 4.6, which sets the int8 range.
    bias[:2] = 0.1
    depthwise.set_weights([kernel, bias])
    project = keras.layers.Conv2D(4, 1, name="project")
    y = project(x)
    weights, project_bias = project.get_weights()
    weights[0, 0, 2, :] = 40.0
    project.set_weights([weights, project_bias])
    # A 3x3 reader, so converters.pointwise_merge leaves the projection's output in the graph.
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="expand")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(y), name="constant_channel")


def _linear_model():
    """A linear 1x1 convolution read by a 3x3 convolution, so the linear output is a tunable tensor."""
    from converters.tf import keras

    keras.utils.set_random_seed(12)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(6, 1, name="linear")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="reader")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(x), name="linear")


def _conversions(model, images):
    from converters.tflite import Variant, convert

    int8 = convert(model, Variant.INT8, representative_inputs=images, output_kind="logit")
    float32 = convert(model, Variant.FLOAT32, output_kind="logit")
    return int8, float32


def _outputs(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    from converters import flatbuffer_edit as fbe

    interpreter = fbe.debug_interpreter(model_bytes)
    detail = interpreter.get_output_details()[0]
    values = []
    for image in images:
        fbe.invoke(interpreter, image)
        raw = interpreter.get_tensor(detail["index"]).astype(np.float64).reshape(-1)
        scale, zero_point = detail["quantization"]
        values.append((raw - zero_point) * scale if scale else raw)
    return np.concatenate(values)


def _op_signature(model_bytes: bytes) -> list[str]:
    from converters import flatbuffer_edit as fbe

    model = fbe.read(model_bytes)
    return [fbe.op_name(model, op) for op in model.subgraphs[0].operators]


def _assert_bias_scales_consistent(model_bytes: bytes) -> None:
    from converters import flatbuffer_edit as fbe

    model = fbe.read(model_bytes)
    graph = model.subgraphs[0]
    for op in graph.operators:
        pair = fbe.biased_input(model, op)
        if pair is None:
            continue
        weights, bias = pair
        expected = float(graph.tensors[op.inputs[0]].quantization.scale[0]) * np.asarray(
            graph.tensors[weights].quantization.scale, dtype=np.float64
        )
        actual = np.asarray(graph.tensors[bias].quantization.scale, dtype=np.float64)
        np.testing.assert_allclose(actual, np.broadcast_to(expected, actual.shape), rtol=1e-5)


def _intermediate(model_bytes: bytes, name: str, images: np.ndarray) -> np.ndarray:
    from converters import flatbuffer_edit as fbe

    interpreter = fbe.debug_interpreter(model_bytes)
    index = fbe.tensor_index_by_name(interpreter, name)
    detail = next(d for d in interpreter.get_tensor_details() if d["index"] == index)
    values = []
    for image in images:
        fbe.invoke(interpreter, image)
        raw = interpreter.get_tensor(index).astype(np.float64)
        scale, zero_point = detail["quantization"]
        values.append((raw - zero_point) * scale if scale else raw)
    return np.stack(values)


def _tensor_named(model_bytes: bytes, fragment: str) -> str:
    from converters import flatbuffer_edit as fbe

    model = fbe.read(model_bytes)
    graph = model.subgraphs[0]
    for op in graph.operators:
        name = fbe.tensor_name(graph, op.outputs[0])
        if fragment in name.split(";")[0]:
            return name
    raise AssertionError(f"no op output named like {fragment!r}")


def test_bias_correction_removes_constant_channel_shift():
    from converters import flatbuffer_edit as fbe
    from converters.bias_correction import correct_biases

    model = _constant_channel_model()
    rng = np.random.default_rng(0)
    images = rng.random((24, SIZE, SIZE, 3), dtype=np.float32)
    int8, float32 = _conversions(model, images)
    project = _tensor_named(int8, "project")

    corrected, summary = correct_biases(int8, float32, images[:16])
    parsed = fbe.read(int8)

    reference = _intermediate(float32, project, images[16:])
    channels = reference.shape[-1]
    before = (_intermediate(int8, project, images[16:]) - reference).reshape(-1, channels).mean(axis=0)
    after = (_intermediate(corrected, project, images[16:]) - reference).reshape(-1, channels).mean(axis=0)
    scale = float(np.ptp(reference)) / 255
    assert np.abs(before).max() > 2 * scale, f"the fixture no longer shifts the projection: {before}"
    assert np.abs(after).max() < np.abs(before).max() / 3, (before, after)
    biased_ops = sum(fbe.biased_input(parsed, op) is not None for op in parsed.subgraphs[0].operators)
    assert biased_ops >= 3
    assert summary.ops == biased_ops
    assert summary.images == 16
    assert summary.largest_shift_steps > 2
    assert _op_signature(corrected) == _op_signature(int8)
    _assert_bias_scales_consistent(corrected)


def test_best_fraction_clips_rare_outliers():
    from converters.activation_ranges import best_fraction

    rng = np.random.default_rng(4)
    gaussian = rng.normal(0.0, 3.0, 1_000_000)
    with_outliers = np.concatenate([gaussian, [-47.0, 69.0]])
    assert best_fraction(with_outliers, -47.0, 69.0) <= 0.5
    uniform = rng.uniform(-1.0, 1.0, 200_000)
    assert best_fraction(uniform, -1.0, 1.0) == 1.0


def test_narrowed_range_rescales_biases():
    from converters import flatbuffer_edit as fbe

    model = _linear_model()
    rng = np.random.default_rng(5)
    images = rng.random((16, SIZE, SIZE, 3), dtype=np.float32)
    # Calibrating on brighter images leaves these images using the middle of each range.
    int8, float32 = _conversions(model, images * 2.5)
    linear = _tensor_named(int8, "linear")
    parsed = fbe.read(int8)
    graph = parsed.subgraphs[0]
    index = next(i for i, t in enumerate(graph.tensors) if t.name.decode() == linear)
    low, high = fbe.tensor_range(graph.tensors[index])
    reference = _intermediate(float32, linear, images)
    # Half the range still contains every value the images produce, so only rounding changes.
    inner = 0.5
    assert reference.min() > low * inner, "the fixture's values no longer fit in half the range"
    assert reference.max() < high * inner, "the fixture's values no longer fit in half the range"

    fbe.set_tensor_range(parsed, index, low * inner, high * inner, fbe.consumers(parsed))
    tuned = fbe.write(parsed)

    _assert_bias_scales_consistent(tuned)
    assert _op_signature(tuned) == _op_signature(int8)
    error_before = np.abs(_intermediate(int8, linear, images) - reference).mean()
    error_after = np.abs(_intermediate(tuned, linear, images) - reference).mean()
    assert error_after < 0.75 * error_before
    float_logits = _outputs(float32, images)
    assert np.abs(_outputs(tuned, images) - float_logits).mean() <= np.abs(_outputs(int8, images) - float_logits).mean() * 1.1


def test_unchanged_range_leaves_outputs_unchanged():
    from converters import flatbuffer_edit as fbe

    model = _linear_model()
    images = np.random.default_rng(2).random((8, SIZE, SIZE, 3), dtype=np.float32)
    int8, _ = _conversions(model, images)
    parsed = fbe.read(int8)
    graph = parsed.subgraphs[0]
    readers = fbe.consumers(parsed)
    index = next(i for i, t in enumerate(graph.tensors) if t.name.decode() == _tensor_named(int8, "linear"))
    low, high = fbe.tensor_range(graph.tensors[index])
    fbe.set_tensor_range(parsed, index, low, high, readers)

    np.testing.assert_allclose(_outputs(fbe.write(parsed), images), _outputs(int8, images), atol=1e-6)


def test_scale_and_zero_point_include_zero():
    from converters import flatbuffer_edit as fbe

    scale, zero_point = fbe.scale_and_zero_point(2.0, 6.0)
    assert scale == pytest.approx(6.0 / 255)
    assert zero_point == -128
    scale, zero_point = fbe.scale_and_zero_point(-3.0, 1.0)
    assert (-128 - zero_point) * scale == pytest.approx(-3.0, abs=scale)
    with pytest.raises(Exception, match="empty activation range"):
        fbe.scale_and_zero_point(0.0, 0.0)


def test_post_calibration_subset_is_deterministic():
    from converters.post_calibration import subset

    inputs = np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
    first, second = subset(inputs, 10, seed=3), subset(inputs, 10, seed=3)
    np.testing.assert_array_equal(first, second)
    assert len(np.unique(first)) == 10
    assert subset(inputs, 80, seed=3) is inputs


def _smooth_images(count: int, seed: int) -> np.ndarray:
    """Images that are nearly flat over every 3x3 patch, as wide areas of a radiograph are."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, SIZE, dtype=np.float32)
    images = np.empty((count, SIZE, SIZE, 3), dtype=np.float32)
    for index in range(count):
        level, tilt = rng.uniform(0.2, 0.8), rng.uniform(-0.2, 0.2)
        images[index] = np.clip(level + tilt * ramp[None, :, None], 0.0, 1.0)
    return images


def _depthwise_model():
    from converters.tf import keras

    keras.utils.set_random_seed(13)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1, name="depthwise")(inputs)
    x = keras.layers.Conv2D(8, 1, name="mixer")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(x), name="depthwise")


def test_weight_rounding_on_flat_patches():
    from converters import flatbuffer_edit as fbe
    from converters.weight_rounding import round_weights

    model = _depthwise_model()
    images = _smooth_images(24, seed=6)
    int8, float32 = _conversions(model, images)
    depthwise = _tensor_named(int8, "depthwise")

    rounded, summary = round_weights(int8, float32, images[:16])

    reference = _intermediate(float32, depthwise, images[16:])
    error_before = np.sqrt(np.mean((_intermediate(int8, depthwise, images[16:]) - reference) ** 2))
    error_after = np.sqrt(np.mean((_intermediate(rounded, depthwise, images[16:]) - reference) ** 2))
    assert error_after < error_before
    assert summary.weights_changed > 0
    assert summary.error_ratio < 1.0
    assert _op_signature(rounded) == _op_signature(int8)
    # Every weight stays within one int8 step of its float value.
    before, after = fbe.read(int8), fbe.read(rounded)
    for op_before, op_after in zip(before.subgraphs[0].operators, after.subgraphs[0].operators):
        if fbe.biased_input(before, op_before) is None:
            continue
        old = fbe.weight_values(before, op_before.inputs[1]).astype(int)
        new = fbe.weight_values(after, op_after.inputs[1]).astype(int)
        assert np.abs(new - old).max() <= 1


def test_weight_rounding_skips_wide_layers(monkeypatch):
    from converters import weight_rounding

    model = _depthwise_model()
    images = _smooth_images(8, seed=7)
    int8, float32 = _conversions(model, images)
    _, everything = weight_rounding.round_weights(int8, float32, images)
    # The depthwise kernel reads 9 values and the dense layer 8, so only the 1x1 mixer (3) stays.
    monkeypatch.setattr(weight_rounding, "MAX_FAN_IN", 4)
    _, narrow_only = weight_rounding.round_weights(int8, float32, images)

    assert everything.ops == 3
    assert narrow_only.ops == 1


def test_shipped_mobilenet_logit_error_shrinks(fracatlas_dir):
    """The three steps on the shipped MobileNetV2 and real radiographs, against plain calibration."""
    import json
    from pathlib import Path

    from converters import calibration
    from converters.post_calibration import PostCalibrationOptions, refine
    from converters.split import read_split
    from converters.tf import keras
    from edgefrac.images import load_input
    from edgefrac.preprocessing import PreprocessConfig

    root = Path(__file__).resolve().parent.parent
    record = json.loads((root / "models" / "mobilenetv2.json").read_text())
    config = PreprocessConfig.from_dict(record["preprocessing"])
    split = read_split(root / "models" / "fracatlas-split.json", fracatlas_dir)
    representative = calibration.from_split(split, config, size=100, seed=0)
    validation = split.subset("validation", decodable_only=True)[:40]
    held_out = np.stack([load_input(split.path_of(entry), config) for entry in validation])
    model = keras.models.load_model(root / "models" / "mobilenetv2.keras", compile=False)
    int8, float32 = _conversions(model, representative.inputs)

    refined, summary = refine(int8, float32, representative.inputs, PostCalibrationOptions(images=16))

    reference = _outputs(float32, held_out)
    plain_error = np.std(_outputs(int8, held_out) - reference)
    refined_error = np.std(_outputs(refined, held_out) - reference)
    assert summary["images"] == 16
    assert summary["range_tuning"]["narrowed"] > 0
    assert refined_error < 0.75 * plain_error, (plain_error, refined_error)


def test_range_tuning_skipped_on_few_images():
    from converters.post_calibration import MIN_RANGE_TUNING_IMAGES, PostCalibrationOptions, refine

    model = _linear_model()
    images = np.random.default_rng(8).random((MIN_RANGE_TUNING_IMAGES - 1, SIZE, SIZE, 3), dtype=np.float32)
    int8, float32 = _conversions(model, images)

    refined, summary = refine(int8, float32, images, PostCalibrationOptions(weight_rounding=False, bias_correction=False))

    assert "skipped" in summary["range_tuning"]
    assert refined == int8


def _pooled_model():
    """Two ReLU convolutions, each read through max pooling, then flatten and two dense layers."""
    from converters.tf import keras

    keras.utils.set_random_seed(13)
    inputs = keras.Input(shape=(SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="second")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="logit")(x), name="pooled")


def _quantization_chains(model_bytes: bytes) -> list[list[tuple[float, int]]]:
    """Return, for each convolution and hidden dense op, the (scale, zero point) of its output
    and of every tensor that max pooling and reshape ops derive from it."""
    from converters import flatbuffer_edit as fbe

    model = fbe.read(model_bytes)
    graph = model.subgraphs[0]
    readers = fbe.consumers(model)
    chains = []
    for op in graph.operators:
        if fbe.op_name(model, op) not in ("CONV_2D", "FULLY_CONNECTED") or op.outputs[0] in graph.outputs:
            continue
        tensor = op.outputs[0]
        chain = [tensor]
        while len(readers.get(tensor, [])) == 1:
            reader = graph.operators[readers[tensor][0]]
            if fbe.op_name(model, reader) not in ("MAX_POOL_2D", "RESHAPE"):
                break
            tensor = reader.outputs[0]
            chain.append(tensor)
        chains.append([fbe.scale_and_zero_point(*fbe.tensor_range(graph.tensors[t])) for t in chain])
    return chains


def test_range_tuning_follows_max_pooling():
    from converters.activation_ranges import tune_activation_ranges

    model = _pooled_model()
    rng = np.random.default_rng(6)
    images = rng.random((24, SIZE, SIZE, 3), dtype=np.float32)
    # Calibrating on brighter images widens every range, so tuning on these images narrows them.
    int8, float32 = _conversions(model, images * 3.0)

    tuned, summary = tune_activation_ranges(int8, float32, images)

    before = _quantization_chains(int8)
    after = _quantization_chains(tuned)
    assert [len(chain) for chain in after] == [2, 3, 1]
    assert summary.candidates == 3
    assert summary.narrowed == 3
    for old, new in zip(before, after, strict=True):
        # Max pooling and reshape need their input's scale and zero point on their output.
        assert len(set(new)) == 1, new
        assert new[0][0] < old[0][0]
    _assert_bias_scales_consistent(tuned)
    assert _op_signature(tuned) == _op_signature(int8)
    float_logits = _outputs(float32, images)
    error_before = np.abs(_outputs(int8, images) - float_logits).mean()
    error_after = np.abs(_outputs(tuned, images) - float_logits).mean()
    assert error_after < error_before
