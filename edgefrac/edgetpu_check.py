"""Check a TFLite model against the Edge TPU's requirements before running ``edgetpu_compiler``.

The compiler maps ops to the Edge TPU in graph order until the first op it
cannot map. That op and every op after it run on the CPU. This check reports
the same things the compiler needs, without the compiler:

* every activation tensor (model inputs, op outputs) is int8 or uint8, and
  constant tensors are int8, uint8 or int32 (biases, axes, shapes);
* every tensor has a static shape (no -1 in its shape signature);
* every op is in the Edge TPU's supported list, and where the first one that
  is not would split the graph.

It reads the op list through the interpreter's ``_get_ops_details()`` (present
in ai-edge-litert 2.3, tflite-runtime 2.14 and tf.lite), with the default CPU
delegate switched off so the list shows the model's own ops. Passing the check
does not guarantee a full mapping: the compiler also rejects some parameter
combinations (the limitations column of Coral's table).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging

import numpy as np

from edgefrac.errors import ModelFileError
from edgefrac.runtime import Runtime, resolve_runtime

logger = logging.getLogger(__name__)

# Builtin op names (as the interpreter reports them) of the operations in the
# "Supported operations" table of https://coral.ai/docs/edgetpu/models-intro/.
# NOTE: the table was read through excerpts of that page and of a copy of it. The
# entries after RESIZE_BILINEAR could not be checked against the page itself.
SUPPORTED_OPS = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
"""Custom op that ``edgetpu_compiler`` puts in place of the ops it mapped."""

_ACTIVATION_TYPES = frozenset({"int8", "uint8"})
_CONSTANT_TYPES = frozenset({"int8", "uint8", "int32"})


@dataclasses.dataclass(frozen=True)
class TensorProblem:
    """A tensor the Edge TPU cannot take: wrong type or a dynamic shape."""

    index: int
    name: str
    problem: str


@dataclasses.dataclass(frozen=True)
class OpEntry:
    """One op of the graph, in execution order, and whether the Edge TPU supports it."""

    index: int
    name: str
    supported: bool


@dataclasses.dataclass(frozen=True)
class EdgeTpuReport:
    """Result of ``check_model``."""

    ops: tuple[OpEntry, ...]
    tensor_problems: tuple[TensorProblem, ...]
    already_compiled: bool

    @property
    def first_unsupported(self) -> OpEntry | None:
        return next((op for op in self.ops if not op.supported), None)

    @property
    def mapped_op_count(self) -> int:
        """Ops before the first unsupported one: those the compiler can put on the Edge TPU."""
        first = self.first_unsupported
        return len(self.ops) if first is None else first.index

    @property
    def compatible(self) -> bool:
        return self.first_unsupported is None and not self.tensor_problems


def _read_graph(model: bytes, runtime: Runtime) -> tuple[list[dict], list[dict], set[int]]:
    """Return the model's ops, its tensors and the indices of its input tensors."""
    keyword_arguments = {"model_content": model}
    module = importlib.import_module(runtime.info.module)
    resolver_type = getattr(module, "OpResolverType", None) or getattr(
        getattr(module, "experimental", None), "OpResolverType", None
    )
    if resolver_type is not None:
        keyword_arguments["experimental_op_resolver_type"] = resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = runtime.interpreter_class(**keyword_arguments)
    except (ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{runtime.info.name} cannot read the model: {message}") from None
    # A runtime without OpResolverType may already show its CPU delegate as one DELEGATE op.
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    inputs = {int(detail["index"]) for detail in interpreter.get_input_details()}
    return ops, interpreter.get_tensor_details(), inputs


def check_model(model: bytes, *, runtime: Runtime | None = None) -> EdgeTpuReport:
    """Check the TFLite bytes ``model`` against the Edge TPU's type, shape and op requirements.

    Raises:
        ModelFileError: the interpreter cannot read the model.
    """
    runtime = runtime or resolve_runtime()
    ops, tensors, model_inputs = _read_graph(model, runtime)

    produced = {int(index) for op in ops for index in op["outputs"] if index >= 0}
    read = {int(index) for op in ops for index in op["inputs"] if index >= 0}
    entries = tuple(
        OpEntry(index=position, name=op["op_name"], supported=op["op_name"] in SUPPORTED_OPS)
        for position, op in enumerate(ops)
    )
    already_compiled = any(op["op_name"] == EDGETPU_CUSTOM_OP for op in ops)

    problems = []
    for tensor in tensors:
        index = int(tensor["index"])
        if index not in produced | read | model_inputs:
            continue
        # Constants are the tensors no op writes that are not model inputs: weights, biases, axes.
        is_constant = index not in produced and index not in model_inputs
        dtype = np.dtype(tensor["dtype"]).name
        allowed = _CONSTANT_TYPES if is_constant else _ACTIVATION_TYPES
        if dtype not in allowed:
            kind = "constant" if is_constant else "activation"
            expected = " or ".join(sorted(allowed))
            problems.append(TensorProblem(index, tensor["name"], f"{kind} tensor is {dtype}; expected {expected}"))
        signature = tensor.get("shape_signature", tensor["shape"])
        if any(int(size) < 0 for size in signature):
            problems.append(TensorProblem(index, tensor["name"], f"dynamic shape {[int(size) for size in signature]}"))
    return EdgeTpuReport(ops=entries, tensor_problems=tuple(problems), already_compiled=already_compiled)
