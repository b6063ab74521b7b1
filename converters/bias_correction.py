"""Empirical bias correction of a full-integer TFLite model.

Rounding weights and activations to int8 does not only add noise: it shifts
the mean of many output channels. MobileNetV2 shows it most. Some of its
depthwise channels are constant (their weights are zero and the batch norm
leaves a bias), the constant rounds to the nearest int8 level, and the next
1x1 convolution multiplies that small rounding error by large weights. The
shift then passes through every later layer and moves the logit.

The correction runs the representative dataset through the int8 model and
through a float32 model converted from the same graph, which has the same
tensor names. For each convolution and fully connected op in execution order
it measures the mean error of every output channel and subtracts it from the
op's int32 bias. The mean uses only positions where the float output lies
strictly inside the fused activation's range, because there the error after
the activation equals the error before it. Each op is measured after the ops before it are
corrected, so it corrects what is left. The model keeps its ops, scales and
zero points; only bias values change.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from converters import flatbuffer_edit as fbe
from edgefrac.errors import UsageError

logger = logging.getLogger(__name__)

# TFLite's ActivationFunctionType codes and the open interval where the
# activation is the identity.
_IDENTITY_RANGE = {
    0: (-np.inf, np.inf),  # NONE
    1: (0.0, np.inf),  # RELU
    2: (-1.0, 1.0),  # RELU_N1_TO_1
    3: (0.0, 6.0),  # RELU6
}


@dataclasses.dataclass(frozen=True)
class BiasCorrection:
    """Summary of one bias correction: ops corrected, images used, largest shift removed (in int8 steps)."""

    ops: int
    images: int
    largest_shift_steps: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mean_output_error(quantized, reference, inputs, output, q_index, f_index, identity_range) -> np.ndarray:
    scale = float(output.quantization.scale[0])
    zero_point = int(output.quantization.zeroPoint[0])
    low, high = identity_range
    error_sum = count = 0
    for image in inputs:
        fbe.invoke(quantized, image)
        fbe.invoke(reference, image)
        f = reference.get_tensor(f_index).astype(np.float64)
        q = (quantized.get_tensor(q_index).astype(np.float64) - zero_point) * scale
        inside = (f > low) & (f < high)
        channels = f.shape[-1]
        error_sum = error_sum + np.where(inside, q - f, 0.0).reshape(-1, channels).sum(axis=0)
        count = count + inside.reshape(-1, channels).sum(axis=0)
    return np.divide(error_sum, count, out=np.zeros_like(error_sum), where=count > 0)


def correct_biases(int8_model: bytes, float_model: bytes, inputs: np.ndarray) -> tuple[bytes, BiasCorrection]:
    """Correct the int32 biases of ``int8_model``; return the new bytes and a summary.

    ``float_model`` is the float32 TFLite conversion of the same Keras graph,
    and ``inputs`` are preprocessed float32 representative images.
    """
    if len(inputs) == 0:
        raise UsageError("bias correction needs at least one representative image")
    model = fbe.read(int8_model)
    graph = model.subgraphs[0]
    reference = fbe.debug_interpreter(float_model)
    current = bytes(int8_model)
    corrected = 0
    largest = 0.0
    for op in graph.operators:
        pair = fbe.biased_input(model, op)
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if pair is None or activation not in _IDENTITY_RANGE:
            continue
        _, bias = pair
        output = graph.tensors[op.outputs[0]]
        name = output.name.decode()
        quantized = fbe.debug_interpreter(current)
        mean_error = _mean_output_error(
            quantized, reference, inputs, output,
            fbe.tensor_index_by_name(quantized, name), fbe.tensor_index_by_name(reference, name),
            _IDENTITY_RANGE[activation],
        )
        bias_scale = np.asarray(graph.tensors[bias].quantization.scale, dtype=np.float64)
        fbe.set_bias_values(model, bias, fbe.bias_values(model, bias) - np.rint(mean_error / bias_scale).astype(np.int64))
        current = fbe.write(model)
        corrected += 1
        shift = float(np.abs(mean_error).max() / float(output.quantization.scale[0]))
        largest = max(largest, shift)
        logger.debug("%s: largest channel shift %.2f int8 steps", name, shift)
    summary = BiasCorrection(corrected, len(inputs), largest)
    logger.info("bias correction: %d ops on %d images; largest shift %.2f int8 steps", corrected, len(inputs), largest)
    return current, summary
