#!/usr/bin/env bash
# Create benchmarks/.venv-tflite-runtime for the suite's tflite-runtime variant.
# tflite-runtime 2.14 has wheels for CPython 3.8 to 3.11 only, so PYTHON must be one of those.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3.11}"
"$python" -m venv "$here/.venv-tflite-runtime"
"$here/.venv-tflite-runtime/bin/pip" install --quiet -r "$here/requirements-tflite-runtime.txt"
"$here/.venv-tflite-runtime/bin/python" -c "import tflite_runtime.interpreter, numpy; print('tflite-runtime ready, numpy', numpy.__version__)"
