"""Quantize and dequantize against values worked out by hand from ``real = scale * (q - zero_point)``."""

from __future__ import annotations

import numpy as np
import pytest

from edgefrac.errors import UsageError
from edgefrac.quantization import dequantize, quantize


def test_quantize_int8_values():
    # scale 0.5, zero point -128: q = round(x / 0.5) - 128.
    result = quantize([0.0, 1.0, 63.5, 127.5], 0.5, -128, np.int8)
    assert result.dtype == np.int8
    assert result.tolist() == [-128, -126, -1, 127]


def test_quantize_uint8_values():
    # scale 0.25, zero point 10: q = round(x / 0.25) + 10.
    result = quantize([0.0, 1.0, -2.5, 5.0], 0.25, 10, np.uint8)
    assert result.dtype == np.uint8
    assert result.tolist() == [10, 14, 0, 30]


def test_quantize_image_scale():
    # A [0, 1] input quantized with scale 1/255 and zero point -128, the usual int8 image input.
    result = quantize([0.0, 128 / 255, 1.0], 1 / 255, -128, np.int8)
    assert result.tolist() == [-128, 0, 127]


def test_quantize_rounds_half_away_from_zero():
    # With scale 1 and zero point 0 the scaled value is the input itself.
    result = quantize([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.49], 1.0, 0, np.int8)
    assert result.tolist() == [1, 2, 3, -1, -2, -3, 0, 0]


def test_quantize_rounds_before_zero_point():
    # -0.5 / 1 rounds to -1 first, then the zero point 5 gives 4 (rounding after the shift would give 5).
    assert quantize([-0.5], 1.0, 5, np.int8).tolist() == [4]


def test_quantize_clips_int8():
    result = quantize([-1000.0, 1000.0, 64.0, -64.5], 0.5, 0, np.int8)
    assert result.tolist() == [-128, 127, 127, -128]


def test_quantize_clips_uint8():
    result = quantize([-1.0, 300.0, 255.0], 1.0, 0, np.uint8)
    assert result.tolist() == [0, 255, 255]


def test_quantize_keeps_shape():
    values = np.zeros((1, 4, 5, 3), dtype=np.float32)
    assert quantize(values, 0.1, 3, np.int8).shape == (1, 4, 5, 3)


def test_dequantize_int8_values():
    values = np.array([-128, -126, 0, 127], dtype=np.int8)
    assert dequantize(values, 0.5, -128).tolist() == [0.0, 1.0, 64.0, 127.5]


def test_dequantize_uint8_values():
    values = np.array([0, 10, 14, 255], dtype=np.uint8)
    assert dequantize(values, 0.25, 10).tolist() == [-2.5, 0.0, 1.0, 61.25]


def test_dequantize_widens_int8():
    # -128 - 127 = -255, which int8 arithmetic would wrap to 1.
    values = np.array([-128, 127], dtype=np.int8)
    result = dequantize(values, 0.5, 127)
    assert result.tolist() == [-127.5, 0.0]


def test_dequantize_widens_uint8():
    # 0 - 255 = -255, which uint8 arithmetic would wrap to 1.
    values = np.array([0], dtype=np.uint8)
    assert dequantize(values, 2.0, 255).tolist() == [-510.0]


def test_dequantize_returns_float64():
    assert dequantize(np.array([1], dtype=np.int8), 0.5, 0).dtype == np.float64


def test_probability_output_levels():
    # An int8 sigmoid output has scale 1/256 and zero point -128: 256 levels from 0 to 255/256.
    levels = dequantize(np.arange(-128, 128, dtype=np.int8), 1 / 256, -128)
    assert levels[0] == 0.0
    assert levels[-1] == 255 / 256
    assert len(np.unique(levels)) == 256


def test_round_trip_on_grid():
    # Every value on the quantization grid survives quantize then dequantize exactly.
    grid = np.arange(-128, 128, dtype=np.float64) * 0.125 - 3 * 0.125
    restored = dequantize(quantize(grid, 0.125, 3, np.int8), 0.125, 3)
    assert np.array_equal(restored, grid)


@pytest.mark.parametrize("scale", [0.0, -0.5, float("nan"), float("inf")])
def test_quantize_rejects_scale(scale):
    with pytest.raises(UsageError, match="scale"):
        quantize([1.0], scale, 0, np.int8)


@pytest.mark.parametrize(("zero_point", "dtype"), [(128, np.int8), (-129, np.int8), (-1, np.uint8), (256, np.uint8)])
def test_quantize_rejects_zero_point(zero_point, dtype):
    with pytest.raises(UsageError, match="zero point"):
        quantize([1.0], 0.5, zero_point, dtype)


def test_quantize_rejects_float_type():
    with pytest.raises(UsageError, match="float32"):
        quantize([1.0], 0.5, 0, np.float32)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_quantize_rejects_non_finite(value):
    with pytest.raises(UsageError, match="NaN or infinite"):
        quantize([0.0, value], 0.5, 0, np.int8)


def test_dequantize_rejects_float_input():
    with pytest.raises(UsageError, match="float32"):
        dequantize(np.array([1.0], dtype=np.float32), 0.5, 0)
