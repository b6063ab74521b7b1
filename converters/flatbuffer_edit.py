"""Read, inspect and edit a TFLite flatbuffer's quantization parameters, int8 weights and int32 biases.

The post-calibration steps (``converters.weight_rounding``,
``converters.activation_ranges`` and ``converters.bias_correction``) change
numbers inside a converted int8 model and never its ops. TFLite's kernels compute their requantization multipliers
from the tensors' scales when the interpreter prepares the model, so a scale
written here takes effect. Every bias must keep
``bias scale = input scale x weight scale``, and ``set_tensor_range`` keeps it.
"""

from __future__ import annotations

import numpy as np

from converters.tf import tf  # noqa: F401  (the flatbuffer tools ship with TensorFlow)
from edgefrac.errors import UsageError
from edgefrac.quantization import quantize
from edgefrac.runtime import resolve_runtime

from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

_INT32 = 2  # TensorType.INT32 in the TFLite schema
_BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def read(model_bytes: bytes):
    """Parse TFLite bytes into the schema's mutable object tree."""
    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))


def write(model) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_name(model, op) -> str:
    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)


def tensor_name(graph, tensor_index: int) -> str:
    return graph.tensors[tensor_index].name.decode()


def consumers(model) -> dict[int, list[int]]:
    """Map each tensor index of the main graph to the indices of the ops that read it."""
    readers: dict[int, list[int]] = {}
    for op_index, op in enumerate(model.subgraphs[0].operators):
        for tensor_index in op.inputs:
            if tensor_index >= 0:
                readers.setdefault(tensor_index, []).append(op_index)
    return readers


def scale_and_zero_point(low: float, high: float) -> tuple[float, int]:
    """Return the int8 scale and zero point of the range ``[low, high]``, widened to include 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        raise UsageError(f"empty activation range [{low}, {high}]")
    scale = (high - low) / 255.0
    zero_point = int(np.clip(np.rint(-128 - low / scale), -128, 127))
    return scale, zero_point


def tensor_range(tensor) -> tuple[float, float]:
    """Return the real range an int8 tensor can represent."""
    scale = float(tensor.quantization.scale[0])
    zero_point = int(tensor.quantization.zeroPoint[0])
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def bias_values(model, tensor_index: int) -> np.ndarray:
    tensor = model.subgraphs[0].tensors[tensor_index]
    data = model.buffers[tensor.buffer].data
    if data is None:
        raise UsageError(f"bias tensor {tensor.name.decode()!r} has no inline data, so it cannot be edited")
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype="<i4").astype(np.int64)


def set_bias_values(model, tensor_index: int, values: np.ndarray) -> None:
    """Write int32 ``values`` into the bias tensor, giving it its own buffer if it shared one."""
    clipped = np.clip(values, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype("<i4")
    _write_buffer(model, tensor_index, np.frombuffer(clipped.tobytes(), dtype=np.uint8))


def weight_values(model, tensor_index: int) -> np.ndarray:
    """Return an int8 weight tensor's values in its stored shape."""
    tensor = model.subgraphs[0].tensors[tensor_index]
    data = model.buffers[tensor.buffer].data
    if data is None:
        raise UsageError(f"weight tensor {tensor.name.decode()!r} has no inline data, so it cannot be edited")
    return np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=np.int8).reshape(tuple(tensor.shape))


def set_weight_values(model, tensor_index: int, values: np.ndarray) -> None:
    """Write int8 ``values`` into the weight tensor, giving it its own buffer if it shared one."""
    _write_buffer(model, tensor_index, np.frombuffer(values.astype(np.int8).tobytes(), dtype=np.uint8))


def _write_buffer(model, tensor_index: int, data: np.ndarray) -> None:
    graph = model.subgraphs[0]
    tensor = graph.tensors[tensor_index]
    if sum(1 for t in graph.tensors if t.buffer == tensor.buffer) > 1:
        model.buffers.append(type(model.buffers[tensor.buffer])())
        tensor.buffer = len(model.buffers) - 1
    model.buffers[tensor.buffer].data = data


def biased_input(model, op) -> tuple[int, int] | None:
    """Return (weight tensor, int32 bias tensor) of a convolution or dense op, else None."""
    if op_name(model, op) not in _BIASED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
        return None
    if model.subgraphs[0].tensors[op.inputs[2]].type != _INT32:
        return None
    return op.inputs[1], op.inputs[2]


def set_tensor_range(model, tensor_index: int, low: float, high: float, readers: dict[int, list[int]]) -> None:
    """Give an int8 activation tensor the range [low, high] and rescale the biases of the ops reading it."""
    graph = model.subgraphs[0]
    tensor = graph.tensors[tensor_index]
    old_scale = float(tensor.quantization.scale[0])
    scale, zero_point = scale_and_zero_point(low, high)
    tensor.quantization.scale = [scale]
    tensor.quantization.zeroPoint = [zero_point]
    for op_index in readers.get(tensor_index, []):
        op = graph.operators[op_index]
        pair = biased_input(model, op)
        if pair is None or op.inputs[0] != tensor_index:
            continue
        weights, bias = pair
        weight_scale = np.asarray(graph.tensors[weights].quantization.scale, dtype=np.float64)
        old_bias_scale = np.asarray(graph.tensors[bias].quantization.scale, dtype=np.float64)
        new_bias_scale = weight_scale * scale
        if old_bias_scale.size != new_bias_scale.size:
            new_bias_scale = np.broadcast_to(new_bias_scale, old_bias_scale.shape).copy()
        real = bias_values(model, bias) * old_bias_scale
        set_bias_values(model, bias, np.rint(real / new_bias_scale).astype(np.int64))
        graph.tensors[bias].quantization.scale = list(new_bias_scale)
        if not np.allclose(old_bias_scale, weight_scale * old_scale, rtol=1e-4):
            raise UsageError(f"bias scale of {tensor_name(graph, bias)!r} is not input scale x weight scale")


def debug_interpreter(model_bytes: bytes):
    """Create an interpreter that keeps every intermediate tensor readable after ``invoke``."""
    interpreter = resolve_runtime().interpreter_class(
        model_content=bytes(model_bytes), experimental_preserve_all_tensors=True, num_threads=1
    )
    interpreter.allocate_tensors()
    return interpreter


def invoke(interpreter, image: np.ndarray) -> None:
    """Run one preprocessed float32 image, quantizing it first when the model's input is integer."""
    detail = interpreter.get_input_details()[0]
    if detail["dtype"] == np.float32:
        value = image[None].astype(np.float32)
    else:
        scale, zero_point = detail["quantization"]
        value = quantize(image[None], scale, zero_point, detail["dtype"])
    interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()


def tensor_index_by_name(interpreter, name: str) -> int:
    for detail in interpreter.get_tensor_details():
        if detail["name"] == name:
            return detail["index"]
    raise UsageError(f"tensor {name!r} has no counterpart in the float model; convert both from one Keras graph")
