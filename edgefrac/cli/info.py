"""``edgefrac info``: report the interpreter, library versions and a model's card."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import click
import numpy as np
import PIL

from edgefrac import __version__
from edgefrac.classifier import FractureClassifier
from edgefrac.cli import main
from edgefrac.cli.infer import RUNTIME_CHOICES
from edgefrac.defaults import default_model_path
from edgefrac.errors import EdgefracError
from edgefrac.exitcodes import ExitCode
from edgefrac.modelfile import load_model
from edgefrac.runtime import resolve_runtime


@main.command()
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Model file to describe. Default: the model shipped with edgefrac.",
)
@click.option(
    "--runtime",
    "runtime_name",
    type=click.Choice(RUNTIME_CHOICES),
    help="TFLite interpreter package to resolve. Default: the first installed of litert, tflite_runtime, tensorflow.",
)
@click.option("--json", "as_json", is_flag=True, help="Write one JSON document to stdout.")
def info(model: Path | None, runtime_name: str | None, as_json: bool) -> None:
    """Show the TFLite interpreter in use, versions, and the model card.

    The card gives the decision threshold and what it was chosen for, the
    test-time augmentation (the views each image is scored in), the
    preprocessing contract, the input and output quantization and the
    provenance. Exits with 1 when the interpreter or the model cannot be
    loaded, after printing everything else.
    """
    report: dict = {
        "edgefrac_version": __version__,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "pillow_version": PIL.__version__,
        "runtime": None,
        "model": None,
        "problems": [],
    }
    problems: list[str] = report["problems"]

    runtime = None
    try:
        runtime = resolve_runtime(runtime_name)
        report["runtime"] = {"name": runtime.info.name, "module": runtime.info.module, "version": runtime.info.version}
    except EdgefracError as error:
        problems.append(f"runtime: {error}")

    try:
        report["model"] = _describe_model(model if model is not None else default_model_path(), runtime)
    except EdgefracError as error:
        problems.append(f"model: {error}")

    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_mapping({key: value for key, value in report.items() if key != "problems"})
        for problem in problems:
            click.echo(f"Error: {problem}", err=True)
    if problems:
        sys.exit(ExitCode.RUNTIME_FAILURE)


def _describe_model(path: Path, runtime) -> dict:
    """Verify the model file and describe its card; with a runtime, also check that it loads."""
    loaded = load_model(path)
    description: dict = {"path": str(path), "sha256": loaded.sha256, "has_card": loaded.has_card}
    card = loaded.card
    if runtime is not None:
        # Creating the interpreter proves this runtime can run the model, and for a plain
        # .tflite it reads the input tensor that replaces the missing card.
        card = FractureClassifier(loaded, runtime=runtime, threads=1).card
        description["loads_in_runtime"] = True
    if card is None:
        return description
    card_dict = card.to_dict()
    description.update(
        {
            "name": card_dict["name"],
            "architecture": card_dict["architecture"],
            "class_names": card_dict["class_names"],
            "output_kind": card_dict["output_kind"],
            "threshold": card_dict["threshold"],
            "test_time_augmentation": card_dict["test_time_augmentation"],
            "preprocessing": card_dict["preprocessing"],
            "quantization": {"input": card_dict["input"], "output": card_dict["output"]},
            "provenance": card_dict["provenance"],
            "evaluation": card_dict["evaluation"],
        }
    )
    return description


def _print_mapping(data: dict, indent: int = 0) -> None:
    for key, value in data.items():
        label = " " * indent + f"{key}:"
        if isinstance(value, dict) and value:
            click.echo(label)
            _print_mapping(value, indent + 2)
        elif value is None or value == {}:
            click.echo(f"{label} -")
        else:
            click.echo(f"{label} {value}")
