"""Affine quantization of model inputs and outputs: ``real = scale * (q - zero_point)``.

Works for int8, uint8 and int16 tensors. Integer values are widened to int64
before the zero point is subtracted, so ``-128 - 127`` gives -255 instead of
wrapping around in int8.
"""

from __future__ import annotations

import numpy as np

from edgefrac.errors import UsageError

_INTEGER_TYPES = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)}


def _check_params(scale: float, zero_point: int, dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _INTEGER_TYPES:
        raise UsageError(f"unsupported quantized type {dtype}: expected int8, uint8 or int16")
    if not np.isfinite(scale) or scale <= 0:
        raise UsageError(f"invalid quantization scale {scale}: expected a positive finite number")
    info = np.iinfo(dtype)
    if not info.min <= int(zero_point) <= info.max:
        raise UsageError(f"invalid zero point {zero_point} for {dtype}: expected a value in [{info.min}, {info.max}]")
    return dtype


def quantize(values, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Map real ``values`` to ``dtype`` with the tensor's ``scale`` and ``zero_point``.

    Rounds half away from zero, as TFLite's reference kernels do, then clips
    to the range of ``dtype``.

    Raises:
        UsageError: a value is NaN or infinite, or the parameters are invalid.
    """
    dtype = _check_params(scale, zero_point, dtype)
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise UsageError("cannot quantize NaN or infinite values; check the preprocessing that produced them")
    scaled = values / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    info = np.iinfo(dtype)
    return np.clip(rounded + int(zero_point), info.min, info.max).astype(dtype)


def dequantize(values, scale: float, zero_point: int) -> np.ndarray:
    """Map quantized ``values`` back to real numbers as float64."""
    values = np.asarray(values)
    _check_params(scale, zero_point, values.dtype)
    return (values.astype(np.int64) - int(zero_point)).astype(np.float64) * float(scale)
