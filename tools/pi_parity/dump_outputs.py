"""Score images with int8 models and save the raw int8 model inputs and outputs.

``check_parity.py`` runs this script twice: natively on x86-64 and inside an
emulated Raspberry Pi CPU. It needs only numpy, Pillow, a TFLite interpreter
and the ``edgefrac`` package on ``PYTHONPATH``, so it runs in a bare Debian
root without click or TensorFlow.

For every model it writes ``<output>/<model stem>.npz`` with

* ``names``: the image paths, in the order given;
* ``inputs``: the quantized input tensors, ``(N, H, W, C)`` in the model's input dtype;
* ``outputs``: the raw output tensors, ``(N, ...)`` in the model's output dtype;
* ``errors``: the decode error message per image, empty where decoding worked
  (the input and output rows of such an image are zeros).

and ``<output>/environment.json`` with the machine and package versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from edgefrac import quantization
from edgefrac.classifier import FractureClassifier
from edgefrac.errors import InputError
from edgefrac.images import load_input

PACKAGES = ("ai-edge-litert", "numpy", "pillow")


def package_versions() -> dict[str, str]:
    """Return the installed version of each package the comparison depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def dump_model(model_path: Path, images: list[str], output: Path, threads: int) -> None:
    """Score ``images`` with one model and write its ``.npz`` file into ``output``."""
    classifier = FractureClassifier.from_path(model_path, threads=threads)
    interpreter = classifier.interpreter
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    if not classifier.input_tensor.is_quantized:
        raise SystemExit(f"{model_path}: the input tensor is {classifier.input_tensor.dtype}, not quantized")

    input_dtype = np.dtype(input_detail["dtype"])
    inputs = np.zeros((len(images), *input_detail["shape"][1:]), dtype=input_dtype)
    outputs = np.zeros((len(images), *output_detail["shape"][1:]), dtype=np.dtype(output_detail["dtype"]))
    errors = []
    for row, image in enumerate(images):
        try:
            model_input = load_input(image, classifier.preprocessing)
        except InputError as error:
            errors.append(str(error))
            continue
        errors.append("")
        batch = quantization.quantize(
            model_input[np.newaxis, ...],
            classifier.input_tensor.scale,
            classifier.input_tensor.zero_point,
            input_dtype,
        )
        interpreter.set_tensor(input_detail["index"], batch)
        interpreter.invoke()
        inputs[row] = batch[0]
        outputs[row] = interpreter.get_tensor(output_detail["index"])[0]

    np.savez(
        output / f"{model_path.stem}.npz",
        names=np.array(images),
        inputs=inputs,
        outputs=outputs,
        errors=np.array(errors),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="int8 .efm or .tflite files")
    parser.add_argument("--images", type=Path, required=True, help="text file with one image path a line")
    parser.add_argument("--output", type=Path, required=True, help="folder for the .npz files")
    parser.add_argument("--threads", type=int, default=4, help="interpreter threads (default: 4, a Pi's core count)")
    arguments = parser.parse_args(argv)

    images = [line for line in arguments.images.read_text().splitlines() if line.strip()]
    arguments.output.mkdir(parents=True, exist_ok=True)
    environment = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": package_versions(),
    }
    (arguments.output / "environment.json").write_text(json.dumps(environment, indent=2))
    for model_path in arguments.models:
        dump_model(model_path, images, arguments.output, arguments.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
