"""Data-aware rounding of int8 convolution and dense weights.

The converter rounds every float weight to the nearest int8 level of its
channel's scale. Each weight's rounding error is small, but what matters is
the error of the layer's output, ``sum_i (q_i * scale - w_i) * x_i``, and
nearest rounding ignores that the inputs ``x_i`` are correlated. Radiographs
have wide flat areas, so the 3x3 patches a depthwise kernel reads are nearly
constant: what reaches the output is the error of the kernel's sum. In
MobileNetV2's first block that error, multiplied by the batch norm folded into
the kernel, moves the logit more than all later layers together.

For each output channel this module minimizes ``r^T H r``, where
``r = q * scale - w`` and ``H = E[x x^T]`` is the second moment of the op's
input patches measured on representative images through the float32 model.
It starts from nearest rounding and moves single weights by one int8 step while
that lowers the objective (coordinate descent), which keeps every weight within
one step of its float value. Scales, zero points and ops are unchanged.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from converters import flatbuffer_edit as fbe
from edgefrac.errors import UsageError

logger = logging.getLogger(__name__)

_SWEEPS = 4
# Layers with a larger fan-in keep nearest rounding, because their second-moment
# matrix grows with the square of the fan-in. The custom CNN's first dense layer
# reads 32,768 values, so its float64 matrix would need 8 GiB.
MAX_FAN_IN = 4096


@dataclasses.dataclass(frozen=True)
class WeightRounding:
    """Summary of one weight rounding: ops re-rounded, images used, weights moved and the output error ratio."""

    ops: int
    images: int
    weights_changed: int
    error_ratio: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Layer:
    op_index: int
    kind: str
    input_name: str
    weights: int  # tensor index in the int8 model
    float_weights: np.ndarray  # (channels, fan_in)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    same_padding: bool
    moment: np.ndarray | None = None  # (1 or channels, fan_in, fan_in)
    count: int = 0


def _float_weights(float_model, float_op) -> np.ndarray:
    graph = float_model.subgraphs[0]
    tensor = graph.tensors[float_op.inputs[1]]
    data = float_model.buffers[tensor.buffer].data
    if data is None or tensor.type != 0:  # FLOAT32
        raise UsageError(f"weights of {tensor.name.decode()!r} in the float model are not inline float32")
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype="<f4").reshape(tuple(tensor.shape))


def _layers(model, float_model) -> list[_Layer]:
    graph, float_graph = model.subgraphs[0], float_model.subgraphs[0]
    if len(graph.operators) != len(float_graph.operators):
        raise UsageError("the int8 and float32 models have different op lists; convert both from one Keras graph")
    layers = []
    for index, op in enumerate(graph.operators):
        kind = fbe.op_name(model, op)
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        weight_tensor = graph.tensors[op.inputs[1]]
        if weight_tensor.type != 9:  # INT8
            continue
        weights = _float_weights(float_model, float_graph.operators[index])
        options = op.builtinOptions
        if kind == "DEPTHWISE_CONV_2D":
            if getattr(options, "depthMultiplier", 1) not in (0, 1):
                continue
            kernel = (weights.shape[1], weights.shape[2])
            per_channel = weights.reshape(-1, weights.shape[-1]).T  # (C, kh*kw)
        elif kind == "CONV_2D":
            kernel = (weights.shape[1], weights.shape[2])
            per_channel = weights.reshape(weights.shape[0], -1)  # (Cout, kh*kw*Cin)
        else:
            kernel = (1, 1)
            per_channel = weights.reshape(weights.shape[0], -1)
        if per_channel.shape[1] > MAX_FAN_IN:
            logger.info(
                "weight rounding skips %s: fan-in %d is over %d",
                fbe.tensor_name(graph, op.outputs[0]), per_channel.shape[1], MAX_FAN_IN,
            )
            continue
        stride = (getattr(options, "strideH", 1) or 1, getattr(options, "strideW", 1) or 1)
        same = getattr(options, "padding", 0) == 0  # Padding.SAME
        if getattr(options, "dilationHFactor", 1) not in (0, 1) or getattr(options, "dilationWFactor", 1) not in (0, 1):
            continue
        input_name = fbe.tensor_name(graph, op.inputs[0])
        layers.append(
            _Layer(index, kind, input_name, op.inputs[1], per_channel.astype(np.float64), kernel, stride, same)
        )
    return layers


def _patches(values: np.ndarray, layer: _Layer) -> np.ndarray:
    """Return the op's input patches: (positions, fan_in) or, for depthwise, (channels, positions, kh*kw)."""
    if layer.kind == "FULLY_CONNECTED":
        return values.reshape(-1, layer.float_weights.shape[1])
    image = values[0]
    kh, kw = layer.kernel
    sh, sw = layer.stride
    if layer.same_padding:
        height, width = image.shape[:2]
        out_h, out_w = -(-height // sh), -(-width // sw)
        pad_h = max((out_h - 1) * sh + kh - height, 0)
        pad_w = max((out_w - 1) * sw + kw - width, 0)
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(image, (kh, kw), axis=(0, 1))[::sh, ::sw]
    # windows: (out_h, out_w, C, kh, kw)
    if layer.kind == "DEPTHWISE_CONV_2D":
        return windows.reshape(-1, windows.shape[2], kh * kw).transpose(1, 0, 2)
    return windows.transpose(0, 1, 3, 4, 2).reshape(-1, kh * kw * windows.shape[2])


def _accumulate(layer: _Layer, values: np.ndarray) -> None:
    patches = _patches(values.astype(np.float64), layer)
    if layer.kind == "DEPTHWISE_CONV_2D":
        moment = np.einsum("cpi,cpj->cij", patches, patches)
        positions = patches.shape[1]
    else:
        moment = (patches.T @ patches)[None]
        positions = patches.shape[0]
    layer.moment = moment if layer.moment is None else layer.moment + moment
    layer.count += positions


def _round(weights: np.ndarray, scale: np.ndarray, moment: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Minimize r^T H r by coordinate descent from nearest rounding.

    Returns the int8 levels and the objective before and after.
    """
    levels = np.clip(np.rint(weights / scale[:, None]), -127, 127)
    residual = levels * scale[:, None] - weights
    gradient = np.einsum("ck,ckj->cj", residual, np.broadcast_to(moment, (len(weights), *moment.shape[1:])))

    def objective():
        return float(np.einsum("ck,ck->", residual, gradient))

    start = objective()
    diagonal = np.broadcast_to(np.diagonal(moment, axis1=1, axis2=2), weights.shape)
    rows = np.broadcast_to(moment, (len(weights), *moment.shape[1:]))
    for _ in range(_SWEEPS):
        changed = 0
        for i in range(weights.shape[1]):
            gain_up = 2 * scale * gradient[:, i] + scale**2 * diagonal[:, i]
            gain_down = -2 * scale * gradient[:, i] + scale**2 * diagonal[:, i]
            step = np.where(gain_up < gain_down, 1.0, -1.0)
            gain = np.minimum(gain_up, gain_down)
            allowed = (gain < -1e-12) & (np.abs(levels[:, i] + step) <= 127)
            allowed &= np.abs(levels[:, i] + step - weights[:, i] / scale) <= 1.0
            if not allowed.any():
                continue
            step = np.where(allowed, step, 0.0)
            levels[:, i] += step
            residual[:, i] += step * scale
            gradient += (step * scale)[:, None] * rows[:, i, :]
            changed += int(allowed.sum())
        if not changed:
            break
    return levels, start, objective()


def round_weights(int8_model: bytes, float_model: bytes, inputs: np.ndarray) -> tuple[bytes, WeightRounding]:
    """Re-round the convolution and dense weights of ``int8_model``; return the new bytes and a summary."""
    if len(inputs) == 0:
        raise UsageError("weight rounding needs at least one representative image")
    model = fbe.read(int8_model)
    float_parsed = fbe.read(float_model)
    layers = _layers(model, float_parsed)
    reference = fbe.debug_interpreter(float_model)
    indices = {layer.op_index: fbe.tensor_index_by_name(reference, layer.input_name) for layer in layers}
    for image in inputs:
        fbe.invoke(reference, image)
        for layer in layers:
            _accumulate(layer, reference.get_tensor(indices[layer.op_index]))

    graph = model.subgraphs[0]
    changed = 0
    before = after = 0.0
    for layer in layers:
        tensor = graph.tensors[layer.weights]
        scale = np.asarray(tensor.quantization.scale, dtype=np.float64)
        scale = np.broadcast_to(scale, (layer.float_weights.shape[0],)).copy()
        current = fbe.weight_values(model, layer.weights)
        levels, start, end = _round(layer.float_weights, scale, layer.moment / max(layer.count, 1))
        if layer.kind == "DEPTHWISE_CONV_2D":
            new = levels.T.reshape(current.shape)
        else:
            new = levels.reshape(current.shape)
        changed += int(np.sum(new != current))
        before += start
        after += end
        fbe.set_weight_values(model, layer.weights, new.astype(np.int8))
    ratio = after / before if before > 0 else 1.0
    summary = WeightRounding(len(layers), len(inputs), changed, ratio)
    logger.info(
        "weight rounding: %d ops on %d images, %d weights moved, output error x%.2f", len(layers), len(inputs), changed, ratio
    )
    return fbe.write(model), summary
