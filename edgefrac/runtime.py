"""Find a TFLite interpreter once and create interpreters with clear errors.

The order is LiteRT (``ai_edge_litert``), then ``tflite_runtime``, then
``tensorflow.lite``. ``EDGEFRAC_RUNTIME`` (``litert``, ``tflite_runtime`` or
``tensorflow``) forces one of them. XNNPACK is left on: it is the default CPU
delegate of all three and makes int8 models several times faster.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import re
from types import ModuleType
from typing import Any, Callable

import numpy as np

from edgefrac.errors import RuntimeIncompatibleError, RuntimeNotFoundError, UsageError

logger = logging.getLogger(__name__)

RUNTIME_ENVIRONMENT_VARIABLE = "EDGEFRAC_RUNTIME"


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """Which interpreter package edgefrac uses, and its version."""

    name: str
    module: str
    version: str
    numpy_version: str

    def describe(self) -> str:
        return f"{self.name} {self.version} (numpy {self.numpy_version})"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A resolved interpreter package: its Interpreter class and delegate loader."""

    info: RuntimeInfo
    interpreter_class: type
    load_delegate: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class _Candidate:
    name: str
    distribution: str
    module: str


_CANDIDATES = (
    _Candidate("litert", "ai-edge-litert", "ai_edge_litert.interpreter"),
    _Candidate("tflite_runtime", "tflite-runtime", "tflite_runtime.interpreter"),
    _Candidate("tensorflow", "tensorflow", "tensorflow.lite"),
)


def _version_of(candidate: _Candidate, module: ModuleType) -> str:
    from importlib import metadata

    for distribution in (candidate.distribution, "tensorflow-cpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def _import(candidate: _Candidate) -> Runtime:
    module = importlib.import_module(candidate.module)
    if candidate.name == "tensorflow":
        interpreter_class = module.Interpreter
        load_delegate = module.experimental.load_delegate
    else:
        interpreter_class = module.Interpreter
        load_delegate = module.load_delegate
    info = RuntimeInfo(
        name=candidate.name,
        module=candidate.module,
        version=_version_of(candidate, module),
        numpy_version=np.__version__,
    )
    return Runtime(info=info, interpreter_class=interpreter_class, load_delegate=load_delegate)


@functools.cache
def resolve_runtime(preferred: str | None = None) -> Runtime:
    """Import the first available interpreter package (or ``preferred``) and cache the result."""
    preferred = preferred or os.environ.get(RUNTIME_ENVIRONMENT_VARIABLE) or None
    candidates = _CANDIDATES
    if preferred:
        candidates = tuple(c for c in _CANDIDATES if c.name == preferred)
        if not candidates:
            names = ", ".join(c.name for c in _CANDIDATES)
            raise UsageError(f"unknown runtime {preferred!r}: expected one of {names}")
    failures = []
    for candidate in candidates:
        try:
            runtime = _import(candidate)
        except ImportError as error:
            failures.append(f"{candidate.module}: {error}")
            if _is_numpy_abi_error(error):
                raise _numpy_abi_error(candidate) from error
            continue
        logger.info("using TFLite runtime %s", runtime.info.describe())
        return runtime
    raise RuntimeNotFoundError(
        "no TFLite interpreter could be imported ("
        + "; ".join(failures)
        + "). Install one: pip install ai-edge-litert (64-bit Linux and macOS arm64), "
        "or pip install 'tflite-runtime==2.14.*' 'numpy<2' where LiteRT has no wheel"
    )


def _is_numpy_abi_error(error: BaseException) -> bool:
    text = str(error)
    return "_ARRAY_API" in text or "numpy.core.multiarray failed to import" in text or "compiled using NumPy 1" in text


def _numpy_abi_error(candidate: _Candidate) -> RuntimeIncompatibleError:
    return RuntimeIncompatibleError(
        f"{candidate.distribution} was built against numpy 1.x and cannot run with numpy {np.__version__}; "
        "install numpy<2 in this environment (pip install 'numpy<2') or install ai-edge-litert instead"
    )


_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(?P<op>\w+)' version '(?P<version>\d+)'")


def make_interpreter(
    model: bytes,
    *,
    threads: int | None = None,
    delegates: tuple = (),
    runtime: Runtime | None = None,
):
    """Create and allocate an interpreter for the TFLite bytes ``model``.

    Raises:
        RuntimeIncompatibleError: the runtime lacks an op (or op version) the model
            uses, or it cannot work with the installed numpy.
    """
    if threads is not None and threads < 1:
        raise UsageError(f"invalid thread count {threads}: expected 1 or more")
    runtime = runtime or resolve_runtime()
    keyword_arguments: dict[str, Any] = {"model_content": model, "num_threads": threads or default_threads()}
    if delegates:
        keyword_arguments["experimental_delegates"] = list(delegates)
    try:
        interpreter = runtime.interpreter_class(**keyword_arguments)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, ImportError) as error:
        raise _translate_load_error(error, runtime.info) from None
    return interpreter


def _translate_load_error(error: BaseException, info: RuntimeInfo) -> Exception:
    text = str(error)
    match = _MISSING_OP.search(text)
    if match:
        return RuntimeIncompatibleError(
            f"{info.name} {info.version} cannot run this model: it has no kernel for op {match['op']} "
            f"version {match['version']}. Install a newer runtime (pip install -U ai-edge-litert), or convert "
            "the model with a TensorFlow release no newer than the runtime"
        )
    if _is_numpy_abi_error(error):
        return RuntimeIncompatibleError(
            f"{info.name} {info.version} was built against numpy 1.x and fails with numpy {info.numpy_version} "
            f"({text.strip().splitlines()[0]}); install 'numpy<2' or use ai-edge-litert"
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return RuntimeIncompatibleError(f"{info.name} {info.version} failed to load the model: {first_line}")


def default_threads() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)
