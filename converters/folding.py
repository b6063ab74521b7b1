"""Fold each batch normalization that follows a ReLU convolution or dense layer into its neighbours.

The custom CNN places batch normalization after the activation: ``Conv2D(relu)
-> BatchNormalization -> MaxPooling2D -> Dropout`` three times, then
``Dense(relu) -> BatchNormalization -> Dropout -> Dense``. TFLite turns each of
those batch normalizations into an int8 MUL and ADD. The tensor before the MUL
contains channels whose raw outputs differ by up to three orders of magnitude,
all in one per-tensor scale. The small channels round to a few levels before
the MUL multiplies them up again. On the trained CNN this doubled the relative
int8 error of the first block.

At inference a batch normalization is ``y = gain * x + offset`` per channel
and dropout is the identity. For ``gain > 0``, ``gain * relu(z)`` equals
``relu(gain * z)``, so the gain moves into the kernel and bias of the layer
before it (TFLite quantizes those kernels per output channel, so that costs
nothing). The offset is a per-channel constant, which max pooling, dropout and
flattening carry through unchanged. It then moves into the bias of the next
dense layer, or of a convolution without padding. A convolution with ``same``
padding pads with zeros after the offset, so there the offset stays as a 1x1
depthwise convolution with unit kernel and the offset as bias, placed after
the pooling where the tensor is smallest.

The result computes the same function with one int8 rounding fewer per batch
normalization. Only single-input chains of channels-last layers, built from
the layer types below, are changed. The folded model is checked against the
original on random inputs. Any other model, and any batch normalization with a
non-positive gain, is left as it is.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from converters.tf import keras

logger = logging.getLogger(__name__)

_CHAIN_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Dense,
    keras.layers.BatchNormalization,
    keras.layers.MaxPooling2D,
    keras.layers.Dropout,
    keras.layers.Flatten,
    keras.layers.Activation,
)
# Layers through which a per-channel constant passes unchanged (flatten tiles it).
_OFFSET_PASSES = (keras.layers.MaxPooling2D, keras.layers.Dropout, keras.layers.Flatten)
CHECK_TOLERANCE = 1e-3


def _is_chain(model: keras.Model, layers: list) -> bool:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    if any(type(layer) not in _CHAIN_LAYERS for layer in layers):
        return False
    # Each layer must read the output of the one before it. A layer called
    # elsewhere too has several inputs and is not part of a plain chain.
    previous = model.inputs[0]
    try:
        for layer in layers:
            if layer.input is not previous:
                return False
            previous = layer.output
    except (AttributeError, ValueError):
        return False
    return previous is model.outputs[0]


def _relu_batchnorm_gain(layer, batchnorm) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (gain, offset) when ``layer -> batchnorm`` can be folded, else None."""
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) or type(layer) is keras.layers.DepthwiseConv2D:
        return None
    if layer.activation is not keras.activations.relu or not isinstance(batchnorm, keras.layers.BatchNormalization):
        return None
    rank = len(batchnorm.input.shape)
    if not layer.use_bias or np.ravel(batchnorm.axis).tolist() not in ([-1], [rank - 1]):
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    mean = np.asarray(batchnorm.moving_mean, dtype=np.float64)
    variance = np.asarray(batchnorm.moving_variance, dtype=np.float64)
    # With scale=False or center=False, Keras keeps no gamma or beta: they are 1 and 0.
    gamma = np.asarray(batchnorm.gamma, dtype=np.float64) if batchnorm.scale else np.ones_like(mean)
    beta = np.asarray(batchnorm.beta, dtype=np.float64) if batchnorm.center else np.zeros_like(mean)
    gain = gamma / np.sqrt(variance + batchnorm.epsilon)
    if np.any(gain <= 0):
        logger.info("batch normalization %s has non-positive gains; not folding it", batchnorm.name)
        return None
    return gain, beta - mean * gain


def _clone(layer, input_shape, weights: list[np.ndarray] | None = None):
    """Return a new layer with the configuration of ``layer`` and the given (or its own) weights."""
    twin = layer.__class__.from_config(layer.get_config())
    twin.build(input_shape)
    weights = layer.get_weights() if weights is None else weights
    twin.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return twin


def _absorb_offset(layer, offset: np.ndarray) -> list[np.ndarray] | None:
    """Return the weights of ``layer`` with a constant ``offset`` on its input moved into its bias."""
    if not getattr(layer, "use_bias", False):
        return None
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    if isinstance(layer, keras.layers.Dense):
        return [kernel, bias + offset @ kernel]
    if type(layer) is keras.layers.Conv2D and layer.padding == "valid" and layer.groups == 1:
        # Without padding, every output position covers the whole kernel over the constant input.
        return [kernel, bias + np.einsum("hwio,i->o", kernel, offset)]
    return None


def _offset_layer(channels: int, offset: np.ndarray, name: str):
    layer = keras.layers.DepthwiseConv2D(1, use_bias=True, name=name)
    return layer, [np.ones((1, 1, channels, 1)), offset]


def fold_batchnorm_after_relu(model: keras.Model) -> keras.Model:
    """Return ``model`` with each ``ReLU layer -> BatchNormalization`` pair folded; see the module docstring."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not _is_chain(model, layers) or not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers):
        return model
    if any(size is None for size in model.inputs[0].shape[1:]):
        return model
    try:
        return _fold(model, layers)
    except (ValueError, TypeError) as error:
        logger.warning("folding batch normalization failed, so %s converts unfolded: %s", model.name, error)
        return model


def _fold(model: keras.Model, layers: list) -> keras.Model:
    names = {layer.name for layer in layers}
    x = model.inputs[0]
    inputs = x
    offset = None
    folded = []
    index = 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        if offset is not None and not isinstance(layer, _OFFSET_PASSES):
            weights = _absorb_offset(layer, offset)
            if weights is None:
                if len(x.shape) != 4:
                    logger.info("no layer can take the offset of a batch normalization before %s; not folding", layer.name)
                    return model
                channels = int(x.shape[-1])
                name = f"{layer.name}_input_offset"
                while name in names:
                    name += "_"
                names.add(name)
                offset_layer, offset_weights = _offset_layer(channels, offset, name)
                x = offset_layer(x)
                offset_layer.set_weights([np.asarray(w, dtype=np.float32) for w in offset_weights])
            else:
                layer = _clone(layer, x.shape, weights)
            offset = None
        pair = _relu_batchnorm_gain(layer, following)
        if pair is not None:
            gain, offset = pair
            kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
            x = _clone(layer, x.shape, [kernel * gain, bias * gain])(x)
            folded.append(f"{following.name} (gains {gain.min():.3g} to {gain.max():.3g})")
            index += 2
            continue
        if offset is not None and isinstance(layer, keras.layers.Flatten):
            offset = np.tile(offset, int(np.prod(x.shape[1:-1])))
        x = (layer if layer not in layers else _clone(layer, x.shape))(x)
        index += 1
    if offset is not None:
        return model
    if not folded:
        return model
    result = keras.Model(inputs, x, name=model.name)
    if not _same_function(model, result):
        logger.warning("folding batch normalization changed the outputs of %s; converting it unfolded", model.name)
        return model
    logger.info("folded batch normalization %s", ", ".join(folded))
    return result


def _same_function(original: keras.Model, folded: keras.Model) -> bool:
    shape = (4, *original.inputs[0].shape[1:])
    sample = np.random.default_rng(0).random(shape, dtype=np.float32)
    with warnings.catch_warnings():
        # Keras warns when the input structure differs from the one the model was built with.
        warnings.simplefilter("ignore", UserWarning)
        expected = np.asarray(original(sample, training=False))
        actual = np.asarray(folded(sample, training=False))
    scale = max(1.0, float(np.abs(expected).max()))
    return bool(np.abs(expected - actual).max() <= CHECK_TOLERANCE * scale)
