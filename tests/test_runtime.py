"""Interpreter resolution, load-error translation and the subprocess load probe, on the real runtimes."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from edgefrac import runtime
from edgefrac.errors import ModelFileError, RuntimeIncompatibleError, RuntimeNotFoundError, UsageError
from edgefrac.modelfile import load_model
from edgefrac.runtime import (
    RUNTIME_ENVIRONMENT_VARIABLE,
    RuntimeInfo,
    make_interpreter,
    probe_load,
    resolve_runtime,
    translate_load_error,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TFLITE_RUNTIME_PYTHON = os.environ.get("EDGEFRAC_TFLITE_RUNTIME_PYTHON")
"""A Python interpreter whose environment has tflite-runtime 2.14 installed, for the tests that run it."""

# Recorded from tflite-runtime 2.14.0 (numpy 1.26.4, Linux x86_64) loading a model with FULLY_CONNECTED version 12.
TFLITE_RUNTIME_MISSING_OP = (
    "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'. An older version of this builtin might be "
    "supported. Are you using an old TFLite binary with a newer model?\nRegistration failed.\n"
)
TFLITE_RUNTIME_2_14 = RuntimeInfo("tflite_runtime", "tflite_runtime.interpreter", "2.14.0", "1.26.4")


def rewrite_model(tflite: bytes, edit) -> bytes:
    """Return ``tflite`` after ``edit`` changed its object tree (TensorFlow's flatbuffer schema, test-only)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    edit(model, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_fully_connected_version(version: int):
    def edit(model, schema):
        for code in model.operatorCodes:
            if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.FULLY_CONNECTED:
                code.version = version

    return edit


def with_huge_input(model, schema):
    # 60000 x 60000 x 3 int8 is 10.8 GB, beyond the probe child's address-space limit.
    tensor = model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]]
    tensor.shape = np.array([1, 60000, 60000, 3], dtype=np.int32)


@pytest.fixture(scope="module")
def int8_tflite(tiny_int8_model) -> bytes:
    return load_model(tiny_int8_model).tflite


@pytest.fixture()
def no_runtime_variable(monkeypatch):
    monkeypatch.delenv(RUNTIME_ENVIRONMENT_VARIABLE, raising=False)


def run_python(code: str, *, env_extra: dict | None = None, python: str = sys.executable, stdin: bytes = b""):
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env_extra or {})}
    environment.pop(RUNTIME_ENVIRONMENT_VARIABLE, None)
    return subprocess.run(
        [python, "-c", textwrap.dedent(code)], input=stdin, capture_output=True, env=environment, timeout=300
    )


# Resolution


def test_resolve_default_litert(no_runtime_variable):
    resolved = resolve_runtime()
    assert resolved.info.name == "litert"
    assert resolved.info.module == "ai_edge_litert.interpreter"
    assert resolved.info.version == metadata.version("ai-edge-litert")
    assert resolved.info.version.startswith("2.3.")


def test_resolve_reports_numpy(no_runtime_variable):
    info = resolve_runtime().info
    assert info.numpy_version == np.__version__
    assert info.describe() == f"litert {info.version} (numpy {np.__version__})"


def test_resolve_environment_tensorflow(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENVIRONMENT_VARIABLE, "tensorflow")
    import tensorflow

    info = resolve_runtime().info
    assert info.name == "tensorflow"
    assert info.version == tensorflow.__version__


def test_resolve_argument_beats_environment(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENVIRONMENT_VARIABLE, "tensorflow")
    assert resolve_runtime("litert").info.name == "litert"


def test_resolve_unknown_name(no_runtime_variable):
    with pytest.raises(UsageError, match="unknown runtime 'tflite'") as caught:
        resolve_runtime("tflite")
    assert "litert, tflite_runtime, tensorflow" in str(caught.value)


def test_resolve_unknown_environment_value(monkeypatch):
    monkeypatch.setenv(RUNTIME_ENVIRONMENT_VARIABLE, "onnxruntime")
    with pytest.raises(UsageError, match=f"unknown {RUNTIME_ENVIRONMENT_VARIABLE} value 'onnxruntime'"):
        resolve_runtime()


def test_resolve_forced_missing(no_runtime_variable):
    try:
        import tflite_runtime  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tflite_runtime is installed here, so it cannot stand for a missing runtime")
    with pytest.raises(RuntimeNotFoundError) as caught:
        resolve_runtime("tflite_runtime")
    message = str(caught.value)
    assert "the tflite_runtime runtime could not be imported" in message
    assert "pip install ai-edge-litert" in message


def test_resolve_none_installed():
    # None in sys.modules makes each import raise ImportError, as if the package were absent.
    completed = run_python(
        """
        import sys
        for name in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
            sys.modules[name] = None
        from edgefrac.errors import RuntimeNotFoundError
        from edgefrac.runtime import resolve_runtime
        try:
            resolve_runtime()
        except RuntimeNotFoundError as error:
            print(error)
            sys.exit(0)
        sys.exit(9)
        """
    )
    output = completed.stdout.decode()
    assert completed.returncode == 0, completed.stderr.decode()
    assert output.startswith("no TFLite interpreter could be imported")
    assert "pip install ai-edge-litert" in output
    assert "pip install 'tflite-runtime==2.14.*' 'numpy<2'" in output


def test_resolve_falls_back_to_tensorflow():
    completed = run_python(
        """
        import sys
        sys.modules["ai_edge_litert"] = None
        sys.modules["tflite_runtime"] = None
        from edgefrac.runtime import resolve_runtime
        print(resolve_runtime().info.name)
        """
    )
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stdout.decode().split() == ["tensorflow"]


def test_tensorflow_matches_litert(int8_tflite):
    litert = make_interpreter(int8_tflite, threads=1, runtime=resolve_runtime("litert"))
    tensorflow = make_interpreter(int8_tflite, threads=1, runtime=resolve_runtime("tensorflow"))
    detail = litert.get_input_details()[0]
    rng = np.random.default_rng(3)
    outputs = {"litert": [], "tensorflow": []}
    for _ in range(8):
        batch = rng.integers(-128, 128, detail["shape"], dtype=np.int8)
        for name, interpreter in (("litert", litert), ("tensorflow", tensorflow)):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
            interpreter.invoke()
            outputs[name].append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    assert outputs["litert"][0].dtype == np.int8
    assert len({int(output.item()) for output in outputs["litert"]}) > 1
    assert [o.item() for o in outputs["tensorflow"]] == [o.item() for o in outputs["litert"]]


def test_make_interpreter_rejects_threads(int8_tflite):
    with pytest.raises(UsageError, match="thread count 0"):
        make_interpreter(int8_tflite, threads=0)


# Load-error translation


def test_translate_missing_op_message():
    error = translate_load_error(ValueError(TFLITE_RUNTIME_MISSING_OP), TFLITE_RUNTIME_2_14)
    message = str(error)
    assert isinstance(error, RuntimeIncompatibleError)
    assert "tflite_runtime 2.14.0" in message
    assert "op FULLY_CONNECTED version 12" in message
    assert "pip install -U ai-edge-litert" in message
    assert "TensorFlow release no newer than tflite_runtime 2.14.0" in message


def test_translate_numpy_abi_chain():
    # tflite-runtime 2.14.0 under numpy 2 raises SystemError at interpreter creation, caused by this ImportError.
    try:
        try:
            raise ImportError("numpy.core.multiarray failed to import")
        except ImportError as cause:
            raise SystemError(
                "<built-in method CreateWrapperFromBuffer of PyCapsule object> returned a result with an "
                "exception set"
            ) from cause
    except SystemError as error:
        translated = translate_load_error(error, RuntimeInfo("tflite_runtime", "m", "2.14.0", "2.4.6"))
    message = str(translated)
    assert isinstance(translated, RuntimeIncompatibleError)
    assert "tflite_runtime 2.14.0 was built against numpy 1.x" in message
    assert "numpy 2.4.6" in message
    assert "pip install 'numpy<2'" in message


def test_translate_array_api_text():
    translated = translate_load_error(AttributeError("_ARRAY_API not found"), TFLITE_RUNTIME_2_14)
    assert isinstance(translated, RuntimeIncompatibleError)
    assert "numpy<2" in str(translated)


def test_translate_custom_op():
    text = "Encountered unresolved custom op: edgetpu-custom-op.\nNode number 0 (edgetpu-custom-op) failed to prepare."
    translated = translate_load_error(RuntimeError(text), TFLITE_RUNTIME_2_14)
    assert isinstance(translated, RuntimeIncompatibleError)
    assert "custom op edgetpu-custom-op," in str(translated)


def test_translate_other_error_model_file():
    translated = translate_load_error(ValueError("The model is not a valid Flatbuffer buffer"), TFLITE_RUNTIME_2_14)
    assert isinstance(translated, ModelFileError)
    assert "(The model is not a valid Flatbuffer buffer)" in str(translated)


def test_litert_op_version_too_new(int8_tflite, no_runtime_variable):
    model = rewrite_model(int8_tflite, with_fully_connected_version(99))
    with pytest.raises(RuntimeIncompatibleError) as caught:
        make_interpreter(model, threads=1)
    message = str(caught.value)
    assert f"litert {resolve_runtime().info.version}" in message
    assert "op FULLY_CONNECTED version 99" in message


@pytest.fixture(scope="module")
def tflite_runtime_python():
    if not TFLITE_RUNTIME_PYTHON:
        pytest.skip(
            "EDGEFRAC_TFLITE_RUNTIME_PYTHON is not set: point it at the python of a venv with "
            "tflite-runtime==2.14.* installed to run this test against tflite-runtime"
        )
    return TFLITE_RUNTIME_PYTHON


TFLITE_RUNTIME_SCRIPT = """
import json, sys
import numpy
from edgefrac.errors import EdgefracError
from edgefrac.runtime import make_interpreter, resolve_runtime
try:
    make_interpreter(sys.stdin.buffer.read(), threads=1, runtime=resolve_runtime("tflite_runtime"))
except EdgefracError as error:
    print(json.dumps([numpy.__version__, type(error).__name__, str(error)]))
else:
    print(json.dumps([numpy.__version__, None, "loaded"]))
"""


def load_in_tflite_runtime(python: str, model: bytes) -> tuple[int, str | None, str]:
    """Load ``model`` with tflite-runtime in the environment of ``python``; return numpy's major version and the outcome."""
    completed = run_python(TFLITE_RUNTIME_SCRIPT, python=python, stdin=model)
    assert completed.returncode == 0, completed.stderr.decode()
    numpy_version, name, message = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return int(numpy_version.split(".")[0]), name, message


def test_tflite_runtime_rejects_new_op(tflite_runtime_python, int8_tflite):
    # Op registration fails before tflite-runtime touches numpy, so the message is the same under numpy 1 and 2.
    model = rewrite_model(int8_tflite, with_fully_connected_version(12))
    _, name, message = load_in_tflite_runtime(tflite_runtime_python, model)
    assert name == "RuntimeIncompatibleError"
    assert "tflite_runtime 2.14" in message
    assert "op FULLY_CONNECTED version 12" in message


def test_tflite_runtime_numpy_outcome(tflite_runtime_python, int8_tflite):
    numpy_major, name, message = load_in_tflite_runtime(tflite_runtime_python, int8_tflite)
    if numpy_major < 2:
        assert name is None
        return
    # tflite-runtime 2.14 wheels are built against numpy 1.x.
    assert name == "RuntimeIncompatibleError"
    assert "was built against numpy 1.x" in message
    assert "pip install 'numpy<2'" in message


# Load probe


def test_probe_accepts_valid_model(int8_tflite):
    assert probe_load(int8_tflite) is None


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_probe_rejects_truncated(int8_tflite, fraction):
    end = max(8, int(len(int8_tflite) * fraction))
    with pytest.raises(ModelFileError, match="could not load the model"):
        probe_load(int8_tflite[:end], label="cut.tflite")


def test_probe_rejects_huge_tensor(int8_tflite):
    with pytest.raises(ModelFileError, match="could not load the model"):
        probe_load(rewrite_model(int8_tflite, with_huge_input))


def test_probe_reports_missing_op(int8_tflite):
    with pytest.raises(RuntimeIncompatibleError, match="op FULLY_CONNECTED version 99"):
        probe_load(rewrite_model(int8_tflite, with_fully_connected_version(99)))


def test_probe_names_crash_signal(int8_tflite, monkeypatch):
    # A child that dies from SIGSEGV stands for a runtime that crashes on a malformed flatbuffer.
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(runtime, "_probe_command", lambda name, limit: [sys.executable, "-c", crash])
    with pytest.raises(ModelFileError, match="crashed with SIGSEGV while loading bad.tflite"):
        probe_load(int8_tflite, label="bad.tflite")


def test_probe_times_out(int8_tflite, monkeypatch):
    monkeypatch.setattr(runtime, "_probe_command", lambda name, limit: [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ModelFileError, match="did not finish within 1 s"):
        probe_load(int8_tflite, timeout_s=1)


def test_probe_reports_child_traceback(int8_tflite, monkeypatch):
    failing = "raise OSError('disk gone')"
    monkeypatch.setattr(runtime, "_probe_command", lambda name, limit: [sys.executable, "-c", failing])
    with pytest.raises(ModelFileError, match="OSError: disk gone"):
        probe_load(int8_tflite)


# The device side never imports TensorFlow


def imported_modules(tree: ast.AST) -> set[str]:
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def module_level_imports(tree: ast.Module) -> set[str]:
    """Return the top-level packages imported outside function bodies."""
    outside_functions = ast.Module(
        body=[node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))],
        type_ignores=[],
    )
    modules = imported_modules(outside_functions)
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for child in node.body:
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    modules |= imported_modules(child)
    return modules


def device_sources() -> list[Path]:
    return sorted((REPO_ROOT / "edgefrac").rglob("*.py"))


def test_device_package_imports_no_tensorflow():
    offenders = []
    for path in device_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for module in imported_modules(tree) & {"tensorflow", "keras", "tf_keras"}:
            offenders.append(f"{path.relative_to(REPO_ROOT)} imports {module}")
    assert offenders == []


def test_device_package_defers_converters():
    # converters imports TensorFlow, so the device side may import it only inside a command's body.
    offenders = []
    for path in device_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        if "converters" in module_level_imports(tree):
            offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []
