"""Camera capture with a fake picamera2 object: format conversion, saved file, model input, CLI."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgefrac import camera
from edgefrac.camera import CameraError, capture_and_score, frame_to_rgb, parse_resolution
from edgefrac.classifier import FractureClassifier
from edgefrac.cli import main
from edgefrac.errors import MissingDependencyError, UsageError

# A pure red pixel as each picamera2 format lays it out in the numpy array.
RED_IN_MEMORY = {
    "RGB888": [0, 0, 255],
    "BGR888": [255, 0, 0],
    "XRGB8888": [0, 0, 255, 255],
    "XBGR8888": [255, 0, 0, 255],
}


class FakeCamera:
    """Stands in for ``picamera2.Picamera2``: records calls and returns a fixed frame per format."""

    def __init__(self, pixel_in_memory: dict[str, list[int]], size=(64, 48)):
        self.pixel_in_memory = pixel_in_memory
        self.default_size = size
        self.configuration = None
        self.started_with = None
        self.stopped = False
        self.closed = False

    def create_still_configuration(self, main, buffer_count):
        return {"main": dict(main), "buffer_count": buffer_count}

    def configure(self, configuration):
        self.configuration = configuration

    def start(self, show_preview):
        self.started_with = {"show_preview": show_preview}

    def capture_array(self, name):
        main_stream = self.configuration["main"]
        width, height = main_stream.get("size", self.default_size)
        pixel = np.array(self.pixel_in_memory[main_stream["format"]], dtype=np.uint8)
        return np.tile(pixel, (height, width, 1))

    def stop(self):
        self.stopped = True

    def close(self):
        self.closed = True


@pytest.mark.parametrize("pixel_format", sorted(RED_IN_MEMORY))
def test_frame_to_rgb_red(pixel_format):
    frame = np.tile(np.array(RED_IN_MEMORY[pixel_format], dtype=np.uint8), (4, 5, 1))
    rgb = frame_to_rgb(frame, pixel_format)
    assert rgb.shape == (4, 5, 3)
    assert (rgb == [255, 0, 0]).all()


def test_frame_to_rgb_unknown_format():
    with pytest.raises(UsageError, match="YUV420"):
        frame_to_rgb(np.zeros((4, 4, 3), dtype=np.uint8), "YUV420")


def test_frame_to_rgb_wrong_shape():
    with pytest.raises(CameraError, match="shape"):
        frame_to_rgb(np.zeros((4, 4, 3), dtype=np.uint8), "XRGB8888")


def test_resolution_parses():
    assert parse_resolution("2028x1520") == (2028, 1520)


@pytest.mark.parametrize("text", ["2028", "0x10", "ax10", "10x", "-5x10"])
def test_resolution_invalid(text):
    with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
        parse_resolution(text)


@pytest.mark.parametrize("pixel_format", ["RGB888", "XBGR8888"])
def test_red_frame_reaches_model_red(tmp_path, tiny_int8_model, pixel_format):
    classifier = FractureClassifier.from_path(tiny_int8_model)
    fake = FakeCamera(RED_IN_MEMORY)
    result = capture_and_score(
        classifier, fake, tmp_path, resolution=(80, 60), pixel_format=pixel_format, warmup_seconds=0
    )

    saved = np.asarray(Image.open(result.image_path).convert("RGB"))
    assert saved.shape == (60, 80, 3)
    assert (saved == [255, 0, 0]).all()

    # The tiny model scales pixels to [0, 1], so red is (1, 0, 0) at every position.
    assert result.model_input.shape == (32, 32, 3)
    assert np.all(result.model_input[..., 0] == 1.0)
    assert np.all(result.model_input[..., 1] == 0.0)
    assert np.all(result.model_input[..., 2] == 0.0)
    assert 0.0 <= result.prediction.probability <= 1.0


def test_capture_without_preview(tmp_path, tiny_int8_model):
    classifier = FractureClassifier.from_path(tiny_int8_model)
    fake = FakeCamera(RED_IN_MEMORY)
    slept = []
    capture_and_score(classifier, fake, tmp_path, resolution=(80, 60), warmup_seconds=1.5, sleep=slept.append)
    assert fake.started_with == {"show_preview": False}
    assert fake.configuration["main"] == {"format": "RGB888", "size": (80, 60)}
    assert fake.stopped
    assert slept == [1.5]


def test_capture_default_resolution(tmp_path, tiny_int8_model):
    classifier = FractureClassifier.from_path(tiny_int8_model)
    fake = FakeCamera(RED_IN_MEMORY, size=(40, 30))
    result = capture_and_score(classifier, fake, tmp_path, warmup_seconds=0)
    assert "size" not in fake.configuration["main"]
    assert Image.open(result.image_path).size == (40, 30)


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here")
def test_open_camera_missing_picamera2():
    with pytest.raises(MissingDependencyError, match="python3-picamera2"):
        camera.open_camera()


def test_cli_capture_writes_png_and_json(tmp_path, tiny_int8_model, monkeypatch):
    fake = FakeCamera(RED_IN_MEMORY)
    monkeypatch.setattr("edgefrac.cli.capture.open_camera", lambda index: fake)
    result = CliRunner().invoke(
        main,
        ["capture", "--model", str(tiny_int8_model), "-o", str(tmp_path), "--warmup", "0",
         "--resolution", "80x60", "--json"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    image = tmp_path / document["image"].split("/")[-1]
    assert image.is_file()
    assert json.loads(image.with_suffix(".json").read_text())["probability"] == document["probability"]
    assert fake.closed


def test_cli_capture_invalid_resolution(tmp_path, tiny_int8_model):
    result = CliRunner().invoke(
        main, ["capture", "--model", str(tiny_int8_model), "-o", str(tmp_path), "--resolution", "big"]
    )
    assert result.exit_code == 2
    assert "WIDTHxHEIGHT" in result.output


@pytest.mark.hardware
def test_real_camera_capture(tmp_path, tiny_int8_model):
    if importlib.util.find_spec("picamera2") is None:
        pytest.skip("picamera2 is not installed; this test needs a Raspberry Pi with a camera")
    try:
        device = camera.open_camera()
    except CameraError as error:
        pytest.skip(f"no camera: {error}")
    classifier = FractureClassifier.from_path(tiny_int8_model)
    try:
        result = capture_and_score(classifier, device, tmp_path, resolution=(640, 480))
    finally:
        device.close()
    assert Image.open(result.image_path).size == (640, 480)
