"""``edgefrac export``: write the TFLite model inside a model file as a plain ``.tflite``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgefrac.cli import main
from edgefrac.dataset import file_sha256
from edgefrac.errors import OutputWriteError, UsageError
from edgefrac.card import ModelCard
from edgefrac.modelfile import export_tflite, load_model


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
def export(model: Path, output: Path) -> None:
    """Write the verified TFLite model inside MODEL (.efm) to OUTPUT (.tflite).

    The output is the converter's bytes unchanged, for tools that read plain
    TFLite files (benchmark_model, edgetpu_compiler, Netron). The model file's
    hashes are checked first, so a corrupted file writes nothing. The folder
    of OUTPUT must exist; it is not created. A plain .tflite has no model
    card, so the options that give it the card's settings go to stderr.
    """
    if output.exists() and os.path.samefile(model, output):
        raise UsageError(f"OUTPUT {output} is the model file itself; pass another output path")
    try:
        written = export_tflite(model, output)
    except OSError as error:
        raise OutputWriteError(f"cannot write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {written} ({written.stat().st_size} bytes, sha256 {file_sha256(written)})")
    card = load_model(model).card
    if card is not None:
        click.echo(f"{written} has no model card; score it as the card does with: {card_options(card)}", err=True)


def card_options(card: ModelCard) -> str:
    """Return the infer options that give a plain .tflite the settings of ``card``."""
    return (
        f"--scaling {card.preprocessing.scaling.value} --resize {card.preprocessing.resize.value} "
        f"--output-kind {card.output_kind.value} --test-time-augmentation {card.test_time_augmentation.value} "
        f"--threshold {card.threshold.value!r}"
    )
