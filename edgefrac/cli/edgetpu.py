"""``edgefrac edgetpu-check``: report what keeps a model off the Edge TPU before compiling it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefrac.cli import main
from edgefrac.delegates import delegates_for_device
from edgefrac.edgetpu_check import check_model
from edgefrac.exitcodes import ExitCode
from edgefrac.modelfile import load_model
from edgefrac.runtime import resolve_runtime

device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the model runs: cpu, auto (an Edge TPU if one loads, else the CPU), edgetpu, edgetpu:N, "
    "usb, usb:N, pci or pci:N. An Edge TPU runs only models compiled with edgetpu_compiler.",
)


def device_delegates(device: str, runtime_name: str | None) -> tuple:
    """Return the delegates for ``--device`` with the runtime that ``--runtime`` selects."""
    return delegates_for_device(device, runtime=resolve_runtime(runtime_name))


@main.command("edgetpu-check")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def edgetpu_check(model: Path, as_json: bool) -> None:
    """Check MODEL (.efm or .tflite) for the Edge TPU: int8/uint8 tensors, static shapes, supported ops.

    Exits 0 when edgetpu_compiler can map the whole graph and 1 when it
    cannot. The report names the first unsupported op. The compiler splits
    the graph there and leaves that op and the rest to the CPU.
    """
    loaded = load_model(model)
    report = check_model(loaded.tflite)
    first = report.first_unsupported
    if as_json:
        document = {
            "model": str(model),
            "compatible": report.compatible,
            "already_compiled": report.already_compiled,
            "op_count": len(report.ops),
            "mapped_op_count": report.mapped_op_count,
            "first_unsupported_op": None if first is None else {"index": first.index, "name": first.name},
            "unsupported_ops": sorted({op.name for op in report.ops if not op.supported}),
            "tensor_problems": [
                {"index": problem.index, "name": problem.name, "problem": problem.problem}
                for problem in report.tensor_problems
            ],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        _print_text(model, report, is_model_file=loaded.has_card)
    if not report.compatible:
        raise SystemExit(ExitCode.RUNTIME_FAILURE)


def _print_text(model: Path, report, *, is_model_file: bool) -> None:
    if report.already_compiled:
        click.echo(f"{model}: already compiled for the Edge TPU (contains edgetpu-custom-op)")
    for problem in report.tensor_problems:
        click.echo(f"tensor {problem.index} {problem.name}: {problem.problem}")
    first = report.first_unsupported
    if first is None:
        click.echo(f"ops: all {len(report.ops)} are in the Edge TPU's supported list")
    else:
        unsupported = sorted({op.name for op in report.ops if not op.supported})
        click.echo(f"unsupported ops: {', '.join(unsupported)}")
        if first.index == 0:
            click.echo(f"split: the first op, {first.name}, is unsupported, so the whole graph stays on the CPU")
        else:
            click.echo(
                f"split: the first unsupported op is #{first.index} {first.name}; edgetpu_compiler can map "
                f"ops 0-{first.index - 1} ({report.mapped_op_count} of {len(report.ops)}) and leaves the rest "
                "to the CPU"
            )
    if report.compatible and is_model_file:
        # edgetpu_compiler reads plain TFLite files, not the .efm zip archive.
        tflite = model.with_suffix(".tflite")
        click.echo(
            f"{model}: compatible; extract the TFLite model, then compile it: "
            f"edgefrac export {model} {tflite} && edgetpu_compiler --show_operations {tflite}"
        )
    elif report.compatible:
        click.echo(f"{model}: compatible; compile it with: edgetpu_compiler --show_operations {model}")
    else:
        click.echo(f"{model}: not fully compatible with the Edge TPU")
