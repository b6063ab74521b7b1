"""Scale up ReLU6 channels that never come near 6, so int8 gives them more levels.

An int8 tensor has one scale for all its channels. After ReLU6 that scale is
6/255 whenever any channel reaches 6, and a channel whose values stay below 0.2
then has fewer than ten levels. MobileNetV2's first two ReLU6 tensors have such
channels, and their rounding, multiplied by the large batch-norm gains of the
following depthwise convolution, moved the int8 logit more than any tensor
after them.

For a channel whose largest value on the representative images is ``m < 6``,
``k * relu6(x) = relu6(k * x)`` for every ``x`` up to ``m`` when ``k = 6 / m``. So
the batch normalization before the ReLU6 is scaled by ``k`` per channel
(gain and offset), and the convolution that reads the tensor divides its input
channel by ``k``. That is the same function on values the representative
images reach, with ``k`` times finer int8 levels for that channel. A value above ``m``
on a new image is clipped at ``m``, as int8 would clip it at the tensor's range.

Only the stem is scaled: the ReLU6 tensors before the first linear
projection (a 1x1 convolution without activation). Their values follow the
pixels closely, so the representative images reach each channel's maximum.
Deeper tensors have sparse channels whose largest values vary from image to
image. Scaling all 34 ReLU6 tensors of MobileNetV2 clipped validation images,
moving the Keras outputs by up to 0.04, and gave a larger int8 error than the
stem alone. That held even when only channels whose maxima agreed within 1%
between the two halves of the representative images were scaled.

The pattern: a channels-last batch normalization read only by a ReLU6, read
only by a depthwise convolution (depth multiplier 1) or a convolution without
groups, directly or through a zero padding.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from converters import graph
from converters.tf import keras

logger = logging.getLogger(__name__)

MAX_FACTOR = 64.0
RELU6_MAX = 6.0


@dataclasses.dataclass(frozen=True)
class ScalingSummary:
    """Counts of scaled tensors and channels, and the largest factor."""

    tensors: int = 0
    channels: int = 0
    largest_factor: float = 1.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Site:
    batchnorm: object
    relu: object
    reader: object  # DepthwiseConv2D or Conv2D


def _is_relu6(layer) -> bool:
    if type(layer) is keras.layers.ReLU:
        return (
            layer.max_value is not None and float(layer.max_value) == RELU6_MAX
            and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
        )
    return type(layer) is keras.layers.Activation and layer.activation is keras.activations.relu6


def _is_scalable_reader(layer) -> bool:
    if getattr(layer, "data_format", None) != "channels_last":
        return False
    if type(layer) is keras.layers.DepthwiseConv2D:
        return layer.depth_multiplier == 1
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


def _is_projection(layer) -> bool:
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and layer.activation is keras.activations.linear
    )


def find_sites(model: keras.Model) -> list[_Site]:
    """Return the batch normalization -> ReLU6 -> convolution chains of the stem of ``model``.

    Layers are visited in graph order, a nested model's layers where it is
    called. The stem ends at the first linear projection.
    """
    sites: list[_Site] = []
    graphs: dict[int, graph.Graph] = {}
    for functional, layer in graph.layers_in_call_order(model):
        if _is_projection(layer):
            break
        if type(layer) is not keras.layers.BatchNormalization or not (layer.scale and layer.center):
            continue
        if np.ravel(layer.axis).tolist() not in ([-1], [len(layer.input.shape) - 1]):
            continue
        nodes = graphs.setdefault(id(functional), graph.Graph.of(functional))
        relu = nodes.only_reader(layer)
        if relu is None or not _is_relu6(relu):
            continue
        reader = nodes.only_reader(relu)
        if type(reader) is keras.layers.ZeroPadding2D and reader.data_format == "channels_last":
            reader = nodes.only_reader(reader)
        if reader is not None and _is_scalable_reader(reader):
            sites.append(_Site(layer, relu, reader))
    return sites


def channel_factors(maxima: np.ndarray) -> np.ndarray:
    """Return each channel's factor ``6 / max``, limited to [1, 64]. A channel that is never positive keeps 1."""
    maxima = np.asarray(maxima, dtype=np.float64)
    factors = np.ones_like(maxima)
    live = maxima > 0
    factors[live] = np.clip(RELU6_MAX / maxima[live], 1.0, MAX_FACTOR)
    return factors


def _clone(layer, weights: list[np.ndarray]):
    twin = layer.__class__.from_config(layer.get_config())
    twin.build(layer.input.shape)
    twin.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return twin


def _scaled_layers(site: _Site, factors: np.ndarray) -> tuple[object, object]:
    gamma, beta, mean, variance = (np.asarray(w, dtype=np.float64) for w in site.batchnorm.get_weights())
    batchnorm = _clone(site.batchnorm, [gamma * factors, beta * factors, mean, variance])
    weights = [np.asarray(w, dtype=np.float64) for w in site.reader.get_weights()]
    # Both kernels keep their input channels on axis 2: (h, w, in, multiplier) and (h, w, in, out).
    weights[0] = weights[0] / factors[np.newaxis, np.newaxis, :, np.newaxis]
    return batchnorm, _clone(site.reader, weights)


def _warn_failed(model: keras.Model, error: Exception) -> None:
    logger.warning(
        "ReLU6 channel scaling failed, so %s converts without it: %s: %s", model.name, type(error).__name__, error
    )


def scale_relu6_channels(model: keras.Model, inputs: np.ndarray) -> tuple[keras.Model, ScalingSummary]:
    """Return ``model`` with its low ReLU6 channels scaled up (see the module docstring) and a summary.

    ``inputs`` are preprocessed representative images. Without any, or on a
    graph without the pattern, ``model`` is returned unchanged.
    """
    if not graph.rewritable(model) or len(inputs) == 0:
        return model, ScalingSummary()
    sites = find_sites(model)
    if not sites:
        return model, ScalingSummary()
    try:
        maxima = graph.run_recording(model, inputs, [site.relu for site in sites])
    except Exception as error:  # noqa: BLE001 - an optimization; a graph it cannot run converts unscaled
        _warn_failed(model, error)
        return model, ScalingSummary()
    replacements: dict[int, object] = {}
    channels, largest, tensors = 0, 1.0, []
    for site in sites:
        factors = channel_factors(maxima[id(site.relu)])
        scaled = int(np.sum(factors > 1.0))
        if not scaled:
            continue
        batchnorm, reader = _scaled_layers(site, factors)
        replacements[id(site.batchnorm)], replacements[id(site.reader)] = batchnorm, reader
        channels += scaled
        largest = max(largest, float(factors.max()))
        tensors.append(f"{site.relu.name} ({scaled} channels)")
    if not replacements:
        return model, ScalingSummary()
    try:
        result = graph.rebuild(model, lambda layer: replacements.get(id(layer)))
        difference = graph.same_function(model, result, inputs[: min(len(inputs), 16)])
    except Exception as error:  # noqa: BLE001 - an optimization; any layer Keras cannot copy ends it
        _warn_failed(model, error)
        return model, ScalingSummary()
    if difference > graph.CHECK_TOLERANCE:
        logger.warning(
            "ReLU6 channel scaling changed the outputs of %s on representative images by %.3g; "
            "converting it unscaled", model.name, difference,
        )
        return model, ScalingSummary()
    logger.info("scaled ReLU6 channels of %s", ", ".join(tensors))
    return result, ScalingSummary(tensors=len(tensors), channels=channels, largest_factor=largest)
