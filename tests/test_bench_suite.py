"""Pure parts of the benchmark suite: MAC counting, the int8 peak formula and the target checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from suite import results  # noqa: E402
from suite.macs import count_macs, int8_peak  # noqa: E402


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
