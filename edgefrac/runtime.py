"""Find a TFLite interpreter once and create interpreters with clear errors.

The order is LiteRT (``ai_edge_litert``), then ``tflite_runtime``, then
``tensorflow.lite``. ``EDGEFRAC_RUNTIME`` (``litert``, ``tflite_runtime`` or
``tensorflow``) forces one of them. XNNPACK is left on: it is the default CPU
delegate of all three and makes int8 models several times faster.

``probe_load`` creates an interpreter in a child process first, for model
bytes that no hash vouches for (a plain ``.tflite``): a runtime that crashes on
a malformed flatbuffer then kills the child, not the caller.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from edgefrac import errors
from edgefrac.errors import (
    EdgefracError,
    ModelFileError,
    RuntimeIncompatibleError,
    RuntimeNotFoundError,
    UsageError,
)

logger = logging.getLogger(__name__)

RUNTIME_ENVIRONMENT_VARIABLE = "EDGEFRAC_RUNTIME"


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """Name and version of the interpreter package edgefrac uses."""

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
    distributions: tuple[str, ...]
    module: str


_CANDIDATES = (
    _Candidate("litert", ("ai-edge-litert",), "ai_edge_litert.interpreter"),
    _Candidate("tflite_runtime", ("tflite-runtime",), "tflite_runtime.interpreter"),
    # ``import tensorflow.lite`` gives TensorFlow's source package, which has no Interpreter in
    # TensorFlow 2.21; the public ``tf.lite.Interpreter`` and ``load_delegate`` are defined here.
    _Candidate("tensorflow", ("tensorflow", "tensorflow-cpu"), "tensorflow.lite.python.interpreter"),
)
RUNTIME_NAMES = tuple(candidate.name for candidate in _CANDIDATES)
"""Names ``resolve_runtime`` and ``EDGEFRAC_RUNTIME`` accept, in resolution order."""

PIP_HINT = (
    "pip install ai-edge-litert (Linux x86_64 and aarch64, macOS arm64), "
    "or pip install 'tflite-runtime==2.14.*' 'numpy<2' where LiteRT has no wheel"
)


def _version_of(candidate: _Candidate, module: ModuleType) -> str:
    from importlib import metadata

    for distribution in candidate.distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def _import(candidate: _Candidate) -> Runtime:
    module = importlib.import_module(candidate.module)
    info = RuntimeInfo(
        name=candidate.name,
        module=candidate.module,
        version=_version_of(candidate, module),
        numpy_version=np.__version__,
    )
    return Runtime(info=info, interpreter_class=module.Interpreter, load_delegate=module.load_delegate)


def resolve_runtime(preferred: str | None = None) -> Runtime:
    """Return the interpreter package to use: ``preferred``, else ``EDGEFRAC_RUNTIME``, else the first installed.

    The import happens once per name; later calls return the cached result.

    Raises:
        UsageError: ``preferred`` or ``EDGEFRAC_RUNTIME`` names no known runtime.
        RuntimeNotFoundError: the requested runtime (or every runtime) cannot be imported.
    """
    source = "runtime"
    if not preferred:
        preferred = os.environ.get(RUNTIME_ENVIRONMENT_VARIABLE, "").strip() or None
        source = f"{RUNTIME_ENVIRONMENT_VARIABLE} value"
    if preferred is not None and preferred not in RUNTIME_NAMES:
        raise UsageError(f"unknown {source} {preferred!r}: expected one of {', '.join(RUNTIME_NAMES)}")
    return _load_runtime(preferred)


@functools.cache
def _load_runtime(preferred: str | None) -> Runtime:
    candidates = tuple(c for c in _CANDIDATES if preferred in (None, c.name))
    failures = []
    for candidate in candidates:
        try:
            runtime = _import(candidate)
        except ImportError as error:
            if _is_numpy_abi_error(error):
                raise RuntimeIncompatibleError(_numpy_abi_message(candidate.name, "", np.__version__)) from error
            failures.append(f"{candidate.module}: {error}")
            continue
        logger.info("using TFLite runtime %s", runtime.info.describe())
        return runtime
    reasons = "; ".join(failures)
    if preferred:
        raise RuntimeNotFoundError(
            f"the {preferred} runtime could not be imported ({reasons}). Install it, or unset "
            f"{RUNTIME_ENVIRONMENT_VARIABLE} and drop --runtime to use the first installed runtime: {PIP_HINT}"
        )
    raise RuntimeNotFoundError(f"no TFLite interpreter could be imported ({reasons}). Install one: {PIP_HINT}")


def _exception_chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _is_numpy_abi_error(error: BaseException) -> bool:
    markers = ("_ARRAY_API", "numpy.core.multiarray failed to import", "compiled using NumPy 1")
    return any(marker in str(link) for link in _exception_chain(error) for marker in markers)


def _numpy_abi_message(name: str, version: str, numpy_version: str) -> str:
    runtime = f"{name} {version}".strip()
    return (
        f"{runtime} was built against numpy 1.x and cannot run with numpy {numpy_version} "
        "(numpy.core.multiarray failed to import, _ARRAY_API not found). Install numpy<2 in this "
        "environment (pip install 'numpy<2'), or install ai-edge-litert, which supports numpy 2"
    )


_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '(?P<op>\w+)' version '(?P<version>\d+)'")
_MISSING_CUSTOM_OP = re.compile(r"unresolved custom op: (?P<op>[\w.-]+?)\.?(?:\s|$)")


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
        ModelFileError: the runtime rejects the bytes as a model (a malformed or
            truncated flatbuffer, tensors it cannot allocate).
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
    except (ValueError, RuntimeError, ImportError, SystemError) as error:
        # tflite-runtime 2.14 under numpy 2 raises SystemError here, caused by an ImportError.
        raise translate_load_error(error, runtime.info) from None
    return interpreter


def translate_load_error(error: BaseException, info: RuntimeInfo) -> EdgefracError:
    """Turn an exception from interpreter creation into an error that names the cause and the fix."""
    text = str(error)
    match = _MISSING_OP.search(text)
    if match:
        return RuntimeIncompatibleError(
            f"{info.name} {info.version} cannot run this model: it has no kernel for op {match['op']} "
            f"version {match['version']}, so the model was converted by a newer TensorFlow than this runtime "
            "supports. Install a newer runtime (pip install -U ai-edge-litert), or convert the model with a "
            f"TensorFlow release no newer than {info.name} {info.version}"
        )
    match = _MISSING_CUSTOM_OP.search(text)
    if match:
        return RuntimeIncompatibleError(
            f"{info.name} {info.version} cannot run this model: it uses the custom op {match['op']}, which "
            "no loaded delegate implements. Load the delegate that provides it, or convert the model with "
            "builtin ops only"
        )
    if _is_numpy_abi_error(error):
        return RuntimeIncompatibleError(_numpy_abi_message(info.name, info.version, info.numpy_version))
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ModelFileError(
        f"{info.name} {info.version} could not load the model ({first_line}). The file is corrupted, "
        "truncated or not a TFLite model; copy or convert it again"
    )


PROBE_TIMEOUT_S = 300.0
"""Maximum seconds a load probe may run. Importing tensorflow.lite alone can take tens of seconds on a slow machine."""

PROBE_ADDRESS_SPACE_BYTES = 4 << 30
"""Address-space limit (RLIMIT_AS) of the probe child, in bytes.

Importing TensorFlow 2.21 reserves about 1 GiB of address space and LiteRT 2.3 about 0.2 GiB (measured on
Linux x86_64). 4 GiB leaves room for a model's tensors, while a hostile tensor shape fails its allocation
instead of exhausting the machine's memory."""


def probe_load(
    model: bytes,
    *,
    runtime: Runtime | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
    address_space_bytes: int | None = PROBE_ADDRESS_SPACE_BYTES,
    label: str = "the model",
) -> None:
    """Create an interpreter for ``model`` in a child process, so a runtime crash cannot kill this one.

    Cost: one Python start, one import of the runtime and one interpreter
    creation, about a second with LiteRT and tens of seconds with
    ``tensorflow.lite`` (an estimate from one x86_64 machine). The child runs
    with one thread and ``address_space_bytes`` of address space (None: no
    limit; applied on Linux only).

    Raises:
        ModelFileError: the child died from a signal, timed out, or the runtime
            rejected the bytes; ``label`` names the model in the message.
        RuntimeIncompatibleError: the runtime lacks an op the model uses, or
            cannot work with the installed numpy.
    """
    runtime = runtime or resolve_runtime()
    command = _probe_command(runtime.info.name, address_space_bytes)
    environment = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    try:
        completed = subprocess.run(
            command, input=model, capture_output=True, timeout=timeout_s, env=environment, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelFileError(
            f"loading {label} with {runtime.info.describe()} did not finish within {timeout_s:g} s in the "
            "load probe; the model may be malformed. Copy or convert it again"
        ) from None
    if completed.returncode == 0:
        return
    if completed.returncode < 0:
        raise ModelFileError(
            f"{runtime.info.name} {runtime.info.version} crashed with {_signal_name(-completed.returncode)} "
            f"while loading {label} in the load probe, so the file is malformed or truncated. Copy or "
            "convert it again"
        )
    raise _probe_failure(completed, label)


def _probe_command(runtime_name: str, address_space_bytes: int | None) -> list[str]:
    limit = "0" if address_space_bytes is None else str(int(address_space_bytes))
    code = "from edgefrac.runtime import _run_probe_child; _run_probe_child()"
    return [sys.executable, "-c", code, runtime_name, limit]


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    if name == "SIGKILL":
        return "SIGKILL (the kernel's out-of-memory killer sends it, among others)"
    return name


def _probe_failure(completed: subprocess.CompletedProcess, label: str) -> EdgefracError:
    try:
        report = json.loads(completed.stdout.decode("utf-8").strip().splitlines()[-1])
        error_class = getattr(errors, report["error"])
        message = str(report["message"])
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        stderr_lines = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        last_line = stderr_lines[-1] if stderr_lines else f"exit status {completed.returncode}"
        return ModelFileError(f"the load probe failed on {label}: {last_line}")
    if not (isinstance(error_class, type) and issubclass(error_class, EdgefracError)):
        return ModelFileError(f"the load probe failed on {label}: {message}")
    return error_class(message)


def _run_probe_child() -> None:
    """Entry point of the probe child: argv is ``[runtime name, address-space limit]``, stdin the model."""
    runtime_name, limit = sys.argv[1], int(sys.argv[2])
    if limit > 0 and sys.platform.startswith("linux"):
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    model = sys.stdin.buffer.read()
    try:
        make_interpreter(model, threads=1, runtime=resolve_runtime(runtime_name))
    except EdgefracError as error:
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        sys.exit(1)
    except MemoryError:
        print(json.dumps({"error": "ModelFileError", "message": "the model's tensors do not fit in memory"}))
        sys.exit(1)


def default_threads() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)
