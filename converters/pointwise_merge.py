"""Merge a linear pointwise convolution into the pointwise convolution that reads it.

In MobileNetV2 the first bottleneck block ends in a 1x1 "project" convolution
with batch normalization and no activation, and its output is read only by the
next block's 1x1 "expand" convolution. Both are linear, so together they are
one 1x1 convolution: ``W = W1 * gain @ W2`` and ``b = (b1 * gain + offset) @ W2 + b2``.
In the width 0.35 model the tensor between them has 8 channels at 112x112 and a
range of about -34 to 50. In int8 that one tensor moved the logit by a standard
deviation of 0.19, more than any other activation. Merging removes the tensor
and its rounding.

The merged layer has ``cin * cout`` weights instead of ``cin * m + m * cout``.
A pair is merged only when that at most doubles the pair's work. In the width
0.35 and 0.5 MobileNetV2 that holds for the first block (1.5x), and not for the
last projection before the 1280-channel convolution (2.4x).

Only exact pairs are merged: 1x1 kernels, stride 1, no dilation or groups,
channels-last, no activation on the first convolution, an optional batch
normalization over the channel axis between them, and no other reader of
either intermediate tensor. The merged model is checked against the original.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from converters import graph
from converters.tf import keras

logger = logging.getLogger(__name__)

MAX_WORK_RATIO = 2.0


@dataclasses.dataclass(frozen=True)
class PointwisePair:
    first: object  # Conv2D 1x1 without activation
    batchnorm: object | None
    second: object  # Conv2D 1x1 that reads the pair's output


def _is_pointwise(layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def _is_channel_batchnorm(layer) -> bool:
    if type(layer) is not keras.layers.BatchNormalization:
        return False
    rank = len(layer.input.shape)
    return np.ravel(layer.axis).tolist() in ([-1], [rank - 1])


def find_pairs(model: keras.Model) -> list[PointwisePair]:
    """Return the pointwise pairs of ``model`` (and its nested models) that can be merged."""
    pairs: list[PointwisePair] = []
    used: set[int] = set()  # a layer takes part in one pair at most, so chains of three merge once
    for functional in graph.functional_models(model):
        nodes = graph.Graph.of(functional)
        for layer in functional.layers:
            if id(layer) in used or not _is_pointwise(layer) or layer.activation is not keras.activations.linear:
                continue
            reader = nodes.only_reader(layer)
            batchnorm = None
            if reader is not None and _is_channel_batchnorm(reader):
                batchnorm, reader = reader, nodes.only_reader(reader)
            if reader is None or not _is_pointwise(reader):
                continue
            cin, middle = layer.kernel.shape[2], layer.kernel.shape[3]
            cout = reader.kernel.shape[3]
            if cin * cout > MAX_WORK_RATIO * (cin * middle + middle * cout):
                logger.info(
                    "not merging %s into %s: the merged layer would have %d weights against %d for the pair",
                    layer.name, reader.name, cin * cout, cin * middle + middle * cout,
                )
                continue
            if id(reader) in used:
                continue
            used.update({id(layer), id(reader)})
            pairs.append(PointwisePair(layer, batchnorm, reader))
    return pairs


def merged_weights(pair: PointwisePair) -> list[np.ndarray]:
    """Return the kernel and bias of the one 1x1 convolution that computes ``pair``."""
    first = [np.asarray(w, dtype=np.float64) for w in pair.first.get_weights()]
    kernel1 = first[0][0, 0]
    bias1 = first[1] if pair.first.use_bias else np.zeros(kernel1.shape[1])
    gain, offset = np.ones(kernel1.shape[1]), np.zeros(kernel1.shape[1])
    if pair.batchnorm is not None:
        bn = pair.batchnorm
        mean = np.asarray(bn.moving_mean, dtype=np.float64)
        variance = np.asarray(bn.moving_variance, dtype=np.float64)
        gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
        beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
        gain = gamma / np.sqrt(variance + bn.epsilon)
        offset = beta - mean * gain
    second = [np.asarray(w, dtype=np.float64) for w in pair.second.get_weights()]
    kernel2 = second[0][0, 0]
    bias2 = second[1] if pair.second.use_bias else np.zeros(kernel2.shape[1])
    kernel = (kernel1 * gain) @ kernel2
    bias = (bias1 * gain + offset) @ kernel2 + bias2
    return [kernel[np.newaxis, np.newaxis].astype(np.float32), bias.astype(np.float32)]


def merge_pointwise_pairs(model: keras.Model, check_inputs: np.ndarray | None = None) -> keras.Model:
    """Return ``model`` with each mergeable pointwise pair merged; see the module docstring.

    The result is checked against ``model`` on ``check_inputs`` (random
    inputs when None). If it differs, or the graph cannot be rebuilt, ``model``
    is returned unchanged.
    """
    if not graph.rewritable(model):
        return model
    pairs = find_pairs(model)
    if not pairs:
        return model
    merged_layers = {}
    for pair in pairs:
        merged = keras.layers.Conv2D(
            pair.second.filters, 1, activation=pair.second.activation, name=f"{pair.second.name}_merged"
        )
        merged.build((None, None, None, pair.first.kernel.shape[2]))
        merged.set_weights(merged_weights(pair))
        merged_layers[id(pair.second)] = merged
    dropped = {id(pair.first) for pair in pairs} | {id(pair.batchnorm) for pair in pairs if pair.batchnorm is not None}

    def replace(layer):
        if id(layer) in dropped:
            return lambda x: x
        return merged_layers.get(id(layer))

    if check_inputs is None:
        shape = (2, *model.inputs[0].shape[1:])
        check_inputs = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
    try:
        result = graph.rebuild(model, replace)
        difference = graph.same_function(model, result, check_inputs)
    except Exception as error:  # noqa: BLE001 - an optimization; any layer Keras cannot copy ends it
        logger.warning(
            "merging pointwise convolutions failed, so %s converts without it: %s: %s",
            model.name, type(error).__name__, error,
        )
        return model
    if difference > graph.CHECK_TOLERANCE:
        logger.warning(
            "merging pointwise convolutions changed the outputs of %s by %.3g; converting it without the merge",
            model.name, difference,
        )
        return model
    merged_names = ", ".join(f"{pair.first.name} into {pair.second.name}" for pair in pairs)
    logger.info("merged %s", merged_names)
    return result
