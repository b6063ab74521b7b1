"""Walk and rebuild Keras functional graphs, nested models included.

The graph rewrites before conversion (``converters.pointwise_merge``,
``converters.relu6_scaling``) need to know which layer reads a tensor and to
rebuild a model with some layers replaced. Keras keeps that structure in each
functional model's nodes. A backbone such as ``keras.applications.MobileNetV2``
is a functional model used as one layer of the classifier, so both levels are
walked.

This relies on two Keras 3 internals, ``Functional._nodes_by_depth`` and
``Functional._run_through_graph``: Keras has no public API for either.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from converters.tf import keras

# Relative tolerance of the check that a rewritten model computes the same function.
CHECK_TOLERANCE = 1e-3


def is_functional(layer) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") and hasattr(layer, "_run_through_graph")


def rewritable(model) -> bool:
    """Return whether the rewrites handle ``model``: functional, one input of static size, one output tensor."""
    if not is_functional(model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    return not isinstance(model.output, (dict, list, tuple)) and None not in tuple(model.inputs[0].shape[1:])


def layers_in_call_order(model: keras.Model) -> Iterator[tuple[keras.Model, object]]:
    """Yield ``(functional model, layer)`` in graph order, a nested model's layers where it is called."""
    for layer in model.layers:
        if is_functional(layer):
            yield from layers_in_call_order(layer)
        else:
            yield model, layer


def functional_models(model: keras.Model) -> Iterator[keras.Model]:
    """Yield ``model`` and every functional model nested in it, outermost first."""
    if not is_functional(model):
        return
    yield model
    for layer in model.layers:
        if is_functional(layer):
            yield from functional_models(layer)


@dataclasses.dataclass
class Graph:
    """The readers of each tensor of one functional model."""

    model: keras.Model
    readers: dict[int, list]  # id(tensor) -> layers that take it as an input

    @classmethod
    def of(cls, model: keras.Model) -> Graph:
        readers: dict[int, list] = {}
        for nodes in model._nodes_by_depth.values():
            for node in nodes:
                if node.is_input:
                    continue
                for tensor in node.input_tensors:
                    readers.setdefault(id(tensor), []).append(node.operation)
        for tensor in model.outputs:
            readers.setdefault(id(tensor), []).append(None)  # read from outside the model
        return cls(model, readers)

    def only_reader(self, layer):
        """Return the one layer that reads ``layer``'s output, or None when there are several (or none)."""
        try:
            output = layer.output
        except (AttributeError, ValueError):
            return None  # a layer called more than once has no single output
        readers = self.readers.get(id(output), [])
        if len(readers) != 1 or readers[0] is None:
            return None
        return readers[0]


def rebuild(model: keras.Model, replace: Callable[[object], Callable | None]) -> keras.Model:
    """Return a flat copy of ``model`` with some layers replaced.

    ``replace(layer)`` returns the callable to use instead of ``layer``, or
    None to keep it. A replacement of ``lambda x: x`` drops the layer. Nested functional models
    are inlined. Kept layers are copied with their weights,
    so each layer of the result belongs to its graph alone (``layer.output``
    of a layer shared between two models names the first model's tensor).
    """
    def operation_fn(operation):
        if is_functional(operation):
            return lambda *args, **kwargs: operation._run_through_graph(_first(args, kwargs), operation_fn=operation_fn)
        replacement = replace(operation)
        if replacement is not None:
            return lambda *args, **kwargs: replacement(_first(args, kwargs))
        return lambda *args, **kwargs: _copy_call(operation, args, kwargs)

    source = model.inputs[0]
    image = keras.Input(shape=tuple(source.shape[1:]), dtype=source.dtype, name=source.name)
    outputs = model._run_through_graph(image, operation_fn=operation_fn)
    return keras.Model(image, outputs, name=model.name)


def _first(args, kwargs):
    """Return the tensor a layer was called on, positionally or as ``inputs=``."""
    return args[0] if args else kwargs["inputs"]


def _copy_call(layer, args, kwargs):
    """Call a new copy of ``layer``, with its weights, on the same arguments."""
    twin = layer.__class__.from_config(layer.get_config())
    kwargs.pop("training", None)
    output = twin(*args, **kwargs)
    twin.set_weights(layer.get_weights())
    return output


def run_recording(model: keras.Model, inputs: np.ndarray, layers: list, batch_size: int = 16) -> dict[int, np.ndarray]:
    """Run ``model`` on ``inputs``; return each listed layer's per-channel maximum output, keyed by id(layer)."""
    recorded_ids = {id(layer) for layer in layers}
    maxima: dict[int, np.ndarray] = {}

    def operation_fn(operation):
        if is_functional(operation):
            return lambda *args, **kwargs: operation._run_through_graph(_first(args, kwargs), operation_fn=operation_fn)
        if id(operation) not in recorded_ids:
            return operation

        def recorded(*args, **kwargs):
            output = operation(*args, **kwargs)
            values = np.asarray(output)
            channel_max = values.reshape(-1, values.shape[-1]).max(axis=0)
            previous = maxima.get(id(operation))
            maxima[id(operation)] = channel_max if previous is None else np.maximum(previous, channel_max)
            return output

        return recorded

    for start in range(0, len(inputs), batch_size):
        model._run_through_graph(inputs[start:start + batch_size], operation_fn=operation_fn)
    return maxima


def same_function(original: keras.Model, rewritten: keras.Model, inputs: np.ndarray) -> float:
    """Return the largest output difference on ``inputs``, relative to the output size (at least 1)."""
    with warnings.catch_warnings():
        # Keras warns when the input structure differs from the one the model was built with.
        warnings.simplefilter("ignore", UserWarning)
        expected = np.asarray(original(inputs, training=False), dtype=np.float64)
        actual = np.asarray(rewritten(inputs, training=False), dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(expected - actual).max() / scale)
