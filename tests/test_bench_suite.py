"""The benchmark suite: MAC counting, the int8 peak formula, the target checks and scoring in a model's views."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from edgefrac.modelfile import load_model, write_model_file  # noqa: E402
from edgefrac.preprocessing import PreprocessConfig, ValueScaling  # noqa: E402
from edgefrac import tta  # noqa: E402
from suite import measure, results  # noqa: E402
from suite import variants as names  # noqa: E402
from suite.macs import count_macs, int8_peak  # noqa: E402
from suite.prepare import prepare_model  # noqa: E402

ONNX_INSTALLED = all(importlib.util.find_spec(name) is not None for name in ("tf2onnx", "onnxruntime"))
NEEDS_ONNX = pytest.mark.skipif(
    not ONNX_INSTALLED,
    reason="tf2onnx and onnxruntime are not installed: pip install -r benchmarks/requirements-onnx.txt",
)


def test_macs_tiny_model(tiny_keras_model):
    from converters.tf import keras

    model = keras.models.load_model(tiny_keras_model, compile=False)
    # Conv 3x3, 3 -> 8 channels on 32x32 (valid) gives 30x30 outputs; max pooling halves to 15x15;
    # conv 3x3, 8 -> 8 gives 13x13; the dense layer maps 8 pooled features to one logit.
    expected = 30 * 30 * 3 * 3 * 3 * 8 + 13 * 13 * 3 * 3 * 8 * 8 + 8 * 1
    assert count_macs(model) == expected


def test_macs_depthwise_nested():
    from converters.tf import keras

    inner_input = keras.Input((8, 8, 4))
    inner = keras.Model(inner_input, keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(inner_input))
    outer_input = keras.Input((8, 8, 4))
    features = inner(outer_input)
    output = keras.layers.Conv2D(5, 1, groups=1)(features)
    model = keras.Model(outer_input, output)
    expected = 8 * 8 * 3 * 3 * 4 * 2 + 8 * 8 * 1 * 1 * 8 * 5
    assert count_macs(model) == expected


def test_peak_avx2(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\ncpu MHz : 2000.000\nflags : fpu sse avx avx2 fma\n")
    peak = int8_peak(cpuinfo)
    assert peak.instruction == "AVX2 vpmaddubsw"
    assert peak.macs_per_second == pytest.approx(peak.cores * 2.0e9 * 32 * 2)


def test_peak_vnni(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\ncpu MHz : 3000.0\nflags : avx2 avx512f avx512_vnni\n")
    assert int8_peak(cpuinfo).macs_per_instruction == 64


def _report(int8_ms, float_ms, onnx_ms, infer_rate, study_rate, cold, cold_tf, rss):
    def invoke(mean):
        return {"1": {"invoke": {"mean_ms": mean}}}

    model = {
        "variants": {
            "tflite-int8": {"invoke": invoke(int8_ms), "cold_start": {"seconds": cold}},
            "tflite-float32": {"invoke": invoke(float_ms)},
            "onnx-int8": {"invoke": invoke(onnx_ms)},
            "keras-study": {"end_to_end": {"images_per_second": study_rate}, "cold_start": {"seconds": cold_tf}},
        },
        "infer_folder": {"images_per_second": infer_rate, "peak_rss_bytes": rss},
    }
    return {"settings": {"threads": [1]}, "models": {"cnn": model}}


def test_targets_all_met():
    report = _report(int8_ms=3.0, float_ms=10.0, onnx_ms=4.0, infer_rate=50.0, study_rate=4.0, cold=0.5,
                     cold_tf=10.0, rss=60e6)
    targets = results.check_targets(report)
    assert [t["met"] for t in targets] == [True] * 5


def test_targets_all_missed():
    report = _report(int8_ms=5.0, float_ms=10.0, onnx_ms=4.0, infer_rate=30.0, study_rate=4.0, cold=2.0,
                     cold_tf=10.0, rss=150e6)
    targets = results.check_targets(report)
    assert [t["met"] for t in targets] == [False] * 5
    assert targets[0]["value"] == pytest.approx(0.5)


def test_targets_not_measured():
    report = {"settings": {"threads": [1]}, "models": {"cnn": {"variants": {}}}}
    assert all(t["met"] is None for t in results.check_targets(report))


MIRROR_SIZE = 16
MIRROR_LOGIT = 4.0
MIRROR_CONFIG = PreprocessConfig(height=MIRROR_SIZE, width=MIRROR_SIZE, scaling=ValueScaling.UNIT)


def _mirror_model():
    """Build a Keras model whose logit is ``4 * (mean of the left half - mean of the right half)`` on [0, 1] inputs.

    An image bright on the left scores logit 4 and its mirror image logit -4,
    so the mean logit of the two views is 0 (probability 0.5).
    """
    from converters import architectures
    from converters.tf import keras

    inputs = keras.Input(shape=(MIRROR_SIZE, MIRROR_SIZE, 3), name="image")
    flat = keras.layers.Flatten()(inputs)
    logit_layer = keras.layers.Dense(1, name=architectures.LOGIT_LAYER)
    logit = logit_layer(flat)
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(logit)
    half = MIRROR_SIZE * (MIRROR_SIZE // 2) * 3
    weights = np.zeros((MIRROR_SIZE, MIRROR_SIZE, 3), dtype=np.float32)
    weights[:, : MIRROR_SIZE // 2, :] = MIRROR_LOGIT / half
    weights[:, MIRROR_SIZE // 2 :, :] = -MIRROR_LOGIT / half
    logit_layer.set_weights([weights.reshape(-1, 1), np.zeros(1, dtype=np.float32)])
    return keras.Model(inputs, probability, name="mirror")


def _half_bright_image(path: Path, bright_left: bool) -> Path:
    pixels = np.zeros((MIRROR_SIZE, MIRROR_SIZE, 3), dtype=np.uint8)
    if bright_left:
        pixels[:, : MIRROR_SIZE // 2] = 255
    else:
        pixels[:, MIRROR_SIZE // 2 :] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory):
    """Every variant's file of the mirror model, prepared from a training record that names horizontal_flip.

    Returns the ModelFiles, the left-bright test image and the work folder.
    """
    from converters.tf import keras

    folder = tmp_path_factory.mktemp("mirror")
    keras_path = folder / "mirror.keras"
    _mirror_model().save(keras_path)
    record = {
        "preprocessing": MIRROR_CONFIG.to_dict(),
        "threshold": {"value": 0.5},
        "test_time_augmentation": "horizontal_flip",
    }
    keras_path.with_suffix(".json").write_text(json.dumps(record))
    # Calibration covers logits -4 to 4, so the int8 output range covers both views of the test image.
    calibration = [_half_bright_image(folder / f"calibration-{index}.png", bright_left=index % 2 == 0)
                   for index in range(4)]
    image = _half_bright_image(folder / "left.png", bright_left=True)
    work = folder / "work"
    model_files = prepare_model(
        "mirror", keras_path, None, calibration, work, default_config=MIRROR_CONFIG, onnx=ONNX_INSTALLED
    )
    keras.backend.clear_session()
    return model_files, image, work


def test_prepare_reads_record_views(mirror_files):
    model_files, _, _ = mirror_files
    assert model_files.augmentation is tta.TestTimeAugmentation.HORIZONTAL_FLIP
    for variant in (names.TFLITE_FLOAT32, names.TFLITE_FLOAT16, names.TFLITE_INT8):
        card = load_model(model_files.files[variant]).card
        assert card.test_time_augmentation is tta.TestTimeAugmentation.HORIZONTAL_FLIP, variant


IN_PROCESS_VARIANTS = (
    names.TFLITE_FLOAT32,
    names.TFLITE_FLOAT16,
    names.TFLITE_INT8,
    pytest.param(names.ONNX_FLOAT32, marks=NEEDS_ONNX),
    pytest.param(names.ONNX_INT8, marks=NEEDS_ONNX),
)
"""Variants that load in the test process. The Keras variants fix TensorFlow's thread count, so they run in a worker."""


def _left_bright_input() -> np.ndarray:
    model_input = np.zeros((MIRROR_SIZE, MIRROR_SIZE, 3), dtype=np.float32)
    model_input[:, : MIRROR_SIZE // 2] = 1.0
    return model_input


@pytest.mark.parametrize("variant", IN_PROCESS_VARIANTS)
def test_variant_scores_both_views(mirror_files, variant):
    model_files, image, _ = mirror_files
    loaded = names.make_variant(variant, model_files.files[variant], MIRROR_CONFIG, 1,
                                tta.TestTimeAugmentation.HORIZONTAL_FLIP)
    model_input = _left_bright_input()
    left = loaded.invoke(model_input)
    right = loaded.invoke(np.ascontiguousarray(model_input[:, ::-1, :]))
    assert left > 0.8
    assert right < 0.2
    expected = float(tta.combine_probabilities([np.float64(left), np.float64(right)]))
    assert loaded.score_file(image) == pytest.approx(expected, abs=1e-6)
    assert loaded.score_file(image) == pytest.approx(0.5, abs=0.05)
    assert set(loaded.stages.seconds) == {"decode and resize", "preprocess", "invoke"}


@NEEDS_ONNX
def test_variant_one_view_without_augmentation(mirror_files):
    model_files, image, _ = mirror_files
    loaded = names.make_variant(names.ONNX_FLOAT32, model_files.files[names.ONNX_FLOAT32], MIRROR_CONFIG, 1)
    assert loaded.augmentation is tta.TestTimeAugmentation.NONE
    assert loaded.score_file(image) == pytest.approx(1.0 / (1.0 + math.exp(-MIRROR_LOGIT)), abs=1e-4)


@pytest.mark.parametrize("variant", [names.KERAS_STUDY, names.KERAS_TF_FUNCTION, names.TFLITE_INT8])
def test_worker_scores_both_views(mirror_files, variant):
    model_files, image, work = mirror_files
    images_file = work / "mirror-subset.json"
    images_file.write_text(json.dumps([["left.png", str(image)]]))
    measured = measure.run_worker(variant, model_files, 1, 2, 1, images_file, work)
    assert "error" not in measured, measured.get("error")
    assert measured["invoke"]["runs"] == 2
    assert measured["end_to_end"]["images"] == 1
    assert measured["probabilities"]["left.png"] == pytest.approx(0.5, abs=0.02)


def test_tflite_variant_rejects_other_views(mirror_files):
    model_files, _, _ = mirror_files
    expected = "names test-time augmentation 'horizontal_flip' but the requested one is 'none'"
    with pytest.raises(ValueError, match=expected):
        names.make_variant(names.TFLITE_INT8, model_files.files[names.TFLITE_INT8], MIRROR_CONFIG, 1)


def test_prepare_rejects_int8_card_with_other_views(mirror_files, tmp_path):
    model_files, image, work = mirror_files
    shipped = load_model(model_files.files[names.TFLITE_INT8])
    one_view_card = dataclasses.replace(shipped.card, test_time_augmentation=tta.TestTimeAugmentation.NONE)
    one_view_file = tmp_path / "one-view-int8.efm"
    write_model_file(one_view_file, shipped.tflite, one_view_card)
    with pytest.raises(ValueError, match="int8 model card names test-time augmentation 'none'"):
        prepare_model(
            "mirror", model_files.keras, one_view_file, [image], work, default_config=MIRROR_CONFIG,
            onnx=ONNX_INSTALLED,
        )


def test_prepare_reconverts_after_record_change(mirror_files, tmp_path):
    model_files, image, _ = mirror_files
    keras_path = tmp_path / "mirror.keras"
    keras_path.write_bytes(model_files.keras.read_bytes())
    record = json.loads(model_files.keras.with_suffix(".json").read_text())
    keras_path.with_suffix(".json").write_text(json.dumps(record))
    work = tmp_path / "work"
    prepare_model("mirror", keras_path, model_files.files[names.TFLITE_INT8], [image], work,
                  default_config=MIRROR_CONFIG, onnx=ONNX_INSTALLED)
    marker = (work / "mirror" / "source.sha256").read_text()

    record["threshold"] = {"value": 0.4}
    keras_path.with_suffix(".json").write_text(json.dumps(record))
    prepared = prepare_model("mirror", keras_path, model_files.files[names.TFLITE_INT8], [image], work,
                             default_config=MIRROR_CONFIG, onnx=ONNX_INSTALLED)
    assert (work / "mirror" / "source.sha256").read_text() != marker
    assert load_model(prepared.files[names.TFLITE_FLOAT32]).card.threshold.value == 0.4
