"""Narrow the int8 ranges of activation tensors whose calibrated min/max is set by rare outliers.

TFLite's calibration gives each activation tensor the range from the smallest
to the largest value seen in the representative dataset. In MobileNetV2 the
linear projection outputs (no ReLU after them) span about +-50 while their
standard deviation is about 3, so one int8 step is about a sixth of a standard
deviation and rounding noise grows through every later block.

The candidates are tensors written by a convolution, a dense layer or an add
and read only by ops that take their input scale from the tensor. Max pooling
and reshaping keep the scale and zero point of their input, so a tensor read
only through them counts too: the whole chain gets the new range. In the
custom CNN each ReLU convolution feeds a max pooling, and the calibrated
ranges after the pooling are 19 to 31 standard deviations wide. For each, this module
samples the tensor's float values from a float32 model converted from the same
graph (it has the same tensor names). It then picks the clipping range with
the smallest mean squared quantization error and writes its scale and zero point. The int32 biases
of the convolutions that read the tensor are rescaled to the new input scale,
as TFLite requires bias scale = input scale x weight scale.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from converters import flatbuffer_edit as fbe

logger = logging.getLogger(__name__)

# Fractions of the calibrated range tried as clipping ranges.
_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)
_PRODUCERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD")
# Ops whose int8 output has the scale and zero point of their input.
_SCALE_PRESERVING = ("MAX_POOL_2D", "RESHAPE")
# Ops whose int8 kernels read the input tensor's own scale and zero point.
_RESCALING_CONSUMERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN")
_SAMPLES_PER_IMAGE = 20_000


@dataclasses.dataclass(frozen=True)
class RangeTuning:
    """Summary of one range tuning: candidate tensors, tensors narrowed and images used."""

    candidates: int
    narrowed: int
    images: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _quantization_mse(values: np.ndarray, low: float, high: float) -> float:
    scale, zero_point = fbe.scale_and_zero_point(low, high)
    levels = np.clip(np.rint(values / scale) + zero_point, -128, 127)
    return float(np.mean(((levels - zero_point) * scale - values) ** 2))


def best_fraction(values: np.ndarray, low: float, high: float) -> float:
    """Return the fraction of ``[low, high]`` whose int8 grid quantizes ``values`` with the smallest MSE.

    Ties go to the wider range.
    """
    errors = [(_quantization_mse(values, low * f, high * f), -f) for f in _FRACTIONS]
    return -min(errors)[1]


def _scale_chain(model, consumers: dict[int, list[int]], tensor_index: int) -> list[int]:
    """Return ``tensor_index`` and the tensors that share its quantization through scale-preserving ops."""
    graph = model.subgraphs[0]
    chain = [tensor_index]
    while True:
        readers = consumers.get(chain[-1], [])
        if len(readers) != 1 or fbe.op_name(model, graph.operators[readers[0]]) not in _SCALE_PRESERVING:
            return chain
        following = graph.operators[readers[0]].outputs[0]
        if fbe.tensor_range(graph.tensors[following]) != fbe.tensor_range(graph.tensors[chain[-1]]):
            return chain
        chain.append(following)


def tune_activation_ranges(
    int8_model: bytes, float_model: bytes, inputs: np.ndarray, seed: int = 0
) -> tuple[bytes, RangeTuning]:
    """Give the eligible activation tensors of ``int8_model`` MSE-optimal ranges; return the new bytes and a summary."""
    model = fbe.read(int8_model)
    graph = model.subgraphs[0]
    consumers = fbe.consumers(model)
    outputs = set(graph.outputs)
    candidates = []
    for op in graph.operators:
        if fbe.op_name(model, op) not in _PRODUCERS:
            continue
        chain = _scale_chain(model, consumers, op.outputs[0])
        readers = consumers.get(chain[-1], [])
        if outputs.intersection(chain) or not readers:
            continue
        if any(fbe.op_name(model, graph.operators[r]) not in _RESCALING_CONSUMERS for r in readers):
            continue
        candidates.append(chain)

    reference = fbe.debug_interpreter(float_model)
    name_to_index = {d["name"]: d["index"] for d in reference.get_tensor_details()}
    rng = np.random.default_rng(seed)
    # Every tensor of a chain is rounded on the same grid, so all of them are sampled.
    samples: dict[int, list[np.ndarray]] = {chain[0]: [] for chain in candidates}
    for image in inputs:
        fbe.invoke(reference, image)
        for chain in candidates:
            for position, tensor_index in enumerate(chain):
                name = fbe.tensor_name(graph, tensor_index)
                if position > 0 and name not in name_to_index:
                    continue
                values = reference.get_tensor(name_to_index[name]).reshape(-1)
                if values.size > _SAMPLES_PER_IMAGE:
                    values = values[rng.choice(values.size, _SAMPLES_PER_IMAGE, replace=False)]
                samples[chain[0]].append(values.astype(np.float64))

    narrowed = 0
    for chain in candidates:
        values = np.concatenate(samples[chain[0]])
        low, high = fbe.tensor_range(graph.tensors[chain[0]])
        fraction = best_fraction(values, low, high)
        if fraction == 1.0:
            continue
        for tensor_index in chain:
            fbe.set_tensor_range(model, tensor_index, low * fraction, high * fraction, consumers)
        narrowed += 1
        logger.debug("%s: range [%.2f, %.2f] narrowed to x%.2f", fbe.tensor_name(graph, chain[0]), low, high, fraction)
    summary = RangeTuning(len(candidates), narrowed, len(inputs))
    logger.info("activation ranges: narrowed %d of %d tensors on %d images", narrowed, len(candidates), len(inputs))
    return fbe.write(model), summary
