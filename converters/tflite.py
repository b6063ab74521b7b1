"""Convert a Keras classifier to TFLite: float32, float16, dynamic-range or full-integer int8.

Every variant has a static batch of 1, so the interpreter never resizes
tensors and XNNPACK plans the whole graph once. The int8 variant has int8 input and output and only
``TFLITE_BUILTINS_INT8`` ops: conversion fails rather than leave float ops.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import logging
from collections.abc import Iterator

import numpy as np

from converters import architectures
from converters.folding import fold_batchnorm_after_relu
from converters.pointwise_merge import merge_pointwise_pairs
from converters.tf import keras, tf
from edgefrac.card import OutputKind
from edgefrac.errors import EdgefracError, UsageError

logger = logging.getLogger(__name__)


class Variant(str, enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    DYNAMIC_RANGE = "dynamic"
    INT8 = "int8"


class ConversionError(EdgefracError):
    """TensorFlow Lite conversion failed; the message carries the converter's reason."""


def export_model(model: keras.Model, output_kind: OutputKind) -> keras.Model:
    """Return the model to convert: the classifier or its logit head, rewritten for int8.

    Both rewrites compute the same function: batch norms after ReLUs are
    folded (``converters.folding``), which keeps the int8 tensors of the custom
    CNN balanced, and pairs of linear pointwise convolutions are merged
    (``converters.pointwise_merge``), which removes MobileNetV2's noisiest int8 tensor.
    """
    try:
        logit = architectures.logit_model(model)
    except UsageError:
        if OutputKind(output_kind) is OutputKind.LOGIT:
            raise
        return model
    folded = merge_pointwise_pairs(fold_batchnorm_after_relu(logit))
    if OutputKind(output_kind) is OutputKind.LOGIT:
        return folded
    if folded is logit:
        return model
    probability = keras.layers.Activation("sigmoid", name=architectures.PROBABILITY_LAYER)(folded.outputs[0])
    return keras.Model(folded.inputs, probability, name=model.name)


def convert(
    model: keras.Model,
    variant: Variant,
    *,
    representative_inputs: np.ndarray | None = None,
    output_kind: OutputKind = OutputKind.PROBABILITY,
) -> bytes:
    """Convert ``model`` to TFLite bytes of ``variant``.

    ``representative_inputs`` are float32 ``(N, H, W, C)`` inputs, already
    preprocessed; int8 conversion needs them to calibrate activation ranges.
    """
    variant = Variant(variant)
    exported = export_model(model, output_kind)
    input_shape = tuple(exported.inputs[0].shape[1:])
    if None in input_shape:
        raise UsageError(f"model input shape {input_shape} is not static; build the model with a fixed input size")

    # Wrapping the model behind a batch-1 input gives every tensor a static shape.
    image = keras.Input(batch_shape=(1, *input_shape), name="image")
    static = keras.Model(image, exported(image, training=False), name=exported.name)
    converter = tf.lite.TFLiteConverter.from_keras_model(static)

    if variant is Variant.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant is Variant.DYNAMIC_RANGE:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant is Variant.INT8:
        if representative_inputs is None or len(representative_inputs) == 0:
            raise UsageError("int8 conversion needs a representative dataset; pass --calibration DIR")
        if representative_inputs.dtype != np.float32 or tuple(representative_inputs.shape[1:]) != input_shape:
            raise UsageError(
                f"representative inputs are {representative_inputs.dtype} {representative_inputs.shape[1:]}; "
                f"expected float32 {input_shape}"
            )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _samples(representative_inputs)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8

    try:
        # Keras prints "Saved artifact at ..." while exporting; stdout carries results only.
        with contextlib.redirect_stdout(sys.stderr):
            result = converter.convert()
    except Exception as error:  # TensorFlow raises ConverterError, ValueError or RuntimeError.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"TFLite conversion to {variant.value} failed: {first}") from error
    logger.info("converted %s to %s: %d bytes", model.name, variant.value, len(result))
    return result


def _samples(inputs: np.ndarray) -> Iterator[list[np.ndarray]]:
    for sample in inputs:
        yield [sample[np.newaxis, ...]]
