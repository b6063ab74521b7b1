"""Fold a batch normalization that follows a ReLU dense layer back into that layer.

The custom CNN ends in ``Dense(256, relu) -> BatchNormalization -> Dropout ->
Dense(1)``. Batch normalization after the activation rescales channels whose
raw outputs differ by orders of magnitude, so the int8 tensor between the
dense layer and the batch normalization needs one scale for all of them: the
largest channels set it. The smallest round to zero before the batch
normalization multiplies them up again.

At inference the batch normalization is ``y = gain * x + offset`` per channel
and dropout is the identity. For ``gain > 0``, ``gain * relu(z)`` equals
``relu(gain * z)``, so the gain moves into the dense layer's kernel and bias
(TFLite quantizes dense kernels per output channel, so that costs nothing) and
the offset moves into the next layer's bias. The result computes the same
function with a balanced int8 activation in between.
"""

from __future__ import annotations

import logging

import numpy as np

from converters.tf import keras

logger = logging.getLogger(__name__)


def _matches(layers: list) -> bool:
    if len(layers) < 4:
        return False
    dense, batchnorm, dropout, head = layers[-4:]
    return (
        isinstance(dense, keras.layers.Dense)
        and dense.activation is keras.activations.relu
        and isinstance(batchnorm, keras.layers.BatchNormalization)
        and isinstance(dropout, keras.layers.Dropout)
        and isinstance(head, keras.layers.Dense)
    )


def fold_batchnorm_after_relu(model: keras.Model) -> keras.Model:
    """Return ``model`` with a ``Dense(relu) -> BatchNorm -> Dropout -> Dense`` tail folded.

    Only a single-input chain of layers with that tail and positive batch
    normalization gains is changed; any other model is returned as it is.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if len(model.inputs) != 1 or not _matches(layers):
        return model
    dense, batchnorm, _, head = layers[-4:]
    gamma, beta, mean, variance = (np.asarray(w, dtype=np.float64) for w in batchnorm.get_weights())
    gain = gamma / np.sqrt(variance + batchnorm.epsilon)
    if np.any(gain <= 0):
        logger.info("batch normalization %s has non-positive gains; not folding it", batchnorm.name)
        return model
    offset = beta - mean * gain
    dense_kernel, dense_bias = (np.asarray(w, dtype=np.float64) for w in dense.get_weights())
    head_kernel, head_bias = (np.asarray(w, dtype=np.float64) for w in head.get_weights())

    x = model.inputs[0]
    inputs = x
    for layer in layers[:-4]:
        x = layer(x)
    scaled = keras.layers.Dense(dense.units, activation="relu", name=dense.name)
    folded_head = keras.layers.Dense(head.units, activation=head.activation, name=head.name)
    outputs = folded_head(scaled(x))
    scaled.set_weights([(dense_kernel * gain).astype(np.float32), (dense_bias * gain).astype(np.float32)])
    folded_head.set_weights([head_kernel.astype(np.float32), (head_bias + offset @ head_kernel).astype(np.float32)])
    logger.info(
        "folded batch normalization %s (gains %.3g to %.3g) into %s and %s",
        batchnorm.name, float(gain.min()), float(gain.max()), dense.name, head.name,
    )
    return keras.Model(inputs, outputs, name=model.name)
