"""``edgefrac capture``: take a still with the Raspberry Pi camera and score it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgefrac.camera import (
    ARRAY_CHANNEL_ORDER,
    DEFAULT_PIXEL_FORMAT,
    DEFAULT_WARMUP_SECONDS,
    capture_and_score,
    open_camera,
    parse_resolution,
)
from edgefrac.cli import main
from edgefrac.cli.edgetpu import device_delegates, device_option
from edgefrac.cli.infer import ClassifierSettings, build_classifier, classifier_options
from edgefrac.cli.types import FiniteFloatRange


@main.command()
@classifier_options
@click.option(
    "--output-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="Folder for the captured PNG and its result JSON.",
)
@click.option("--resolution", help="Still size as WIDTHxHEIGHT in pixels. Default: the sensor's full resolution.")
@click.option(
    "--format", "pixel_format", type=click.Choice(sorted(ARRAY_CHANNEL_ORDER)), default=DEFAULT_PIXEL_FORMAT,
    show_default=True, help="picamera2 pixel format of the main stream.",
)
@click.option("--camera-index", type=click.IntRange(min=0), default=0, show_default=True, help="libcamera camera number.")
@click.option(
    "--warmup", type=FiniteFloatRange(min=0.0), default=DEFAULT_WARMUP_SECONDS, show_default=True,
    help="Seconds to let auto exposure and white balance settle before the still.",
)
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def capture(
    settings: ClassifierSettings,
    output_dir: Path,
    resolution: str | None,
    pixel_format: str,
    camera_index: int,
    warmup: float,
    device: str,
    as_json: bool,
) -> None:
    """Take one still with the Pi camera (no preview window), save it as PNG and score it.

    The PNG and a JSON file with the result are written to --output-dir under
    the same capture-<time> name. Needs picamera2 (sudo apt install
    python3-picamera2 on Raspberry Pi OS).
    """
    size = parse_resolution(resolution) if resolution else None
    classifier = build_classifier(settings, delegates=device_delegates(device, settings.runtime))
    camera = open_camera(camera_index)
    try:
        result = capture_and_score(
            classifier, camera, output_dir, resolution=size, pixel_format=pixel_format, warmup_seconds=warmup
        )
    finally:
        camera.close()

    prediction = result.prediction
    document = {
        "image": str(result.image_path),
        "model": str(settings.model_path),
        "probability": prediction.probability,
        "fractured": prediction.fractured,
        "threshold": classifier.threshold,
        "device": device,
    }
    result.image_path.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        label = "fractured" if prediction.fractured else "not fractured"
        click.echo(f"{result.image_path}\t{prediction.probability:.4f}\t{label}")
