"""Take a still with a Raspberry Pi camera (picamera2) and score it.

picamera2 names its formats after libcamera/DRM fourcc codes, which list the
channels from the most significant byte of a little-endian pixel word. In
memory, and so in the numpy array ``capture_array`` returns, the byte order is
reversed: "RGB888" arrives as B, G, R and "BGR888" as R, G, B. picamera2's own
``Helpers.make_image`` (picamera2/request.py) uses the same mapping when it
builds a PIL image.

The captured frame is saved as a lossless PNG and then scored from that file,
so the stored image is exactly what the model saw and goes through the same
decoder and preprocessing as any other file.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from edgefrac.classifier import FractureClassifier, Prediction
from edgefrac.errors import EdgefracError, MissingDependencyError, UsageError
from edgefrac.images import load_input

logger = logging.getLogger(__name__)

ARRAY_CHANNEL_ORDER = {
    "RGB888": "BGR",
    "BGR888": "RGB",
    "XRGB8888": "BGRX",
    "XBGR8888": "RGBX",
}
"""Channel order of the numpy array for each picamera2 format edgefrac accepts."""

DEFAULT_PIXEL_FORMAT = "RGB888"
DEFAULT_WARMUP_SECONDS = 2.0
"""Time for auto exposure and auto white balance to settle after the camera starts."""


class CameraError(EdgefracError):
    """The camera is missing, busy or returned an unusable frame."""


@dataclasses.dataclass(frozen=True)
class CaptureResult:
    """One captured and scored still: the saved PNG, the model input and the prediction."""

    image_path: Path
    model_input: np.ndarray
    prediction: Prediction


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse ``"2028x1520"`` into ``(width, height)``."""
    width, separator, height = text.lower().partition("x")
    if not separator or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise UsageError(f"invalid resolution {text!r}: expected WIDTHxHEIGHT in pixels, such as 2028x1520")
    return int(width), int(height)


def frame_to_rgb(frame: np.ndarray, pixel_format: str) -> np.ndarray:
    """Return the ``(H, W, 3)`` uint8 RGB pixels of a picamera2 frame in ``pixel_format``."""
    order = ARRAY_CHANNEL_ORDER.get(pixel_format)
    if order is None:
        raise UsageError(
            f"unsupported camera format {pixel_format!r}: expected one of {', '.join(ARRAY_CHANNEL_ORDER)}"
        )
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != len(order):
        raise CameraError(
            f"the camera returned a {frame.dtype} frame of shape {list(frame.shape)} for format {pixel_format}; "
            f"expected uint8 (height, width, {len(order)})"
        )
    indices = [order.index(channel) for channel in "RGB"]
    return np.ascontiguousarray(frame[..., indices])


def open_camera(camera_index: int = 0):
    """Open camera ``camera_index`` with picamera2, importing it only now.

    Raises:
        MissingDependencyError: picamera2 or libcamera's Python bindings are not installed.
        CameraError: libcamera finds no camera with that index, or it is in use.
    """
    try:
        from picamera2 import Picamera2
    except ImportError as error:
        missing = getattr(error, "name", None) or str(error)
        raise MissingDependencyError(
            f"the camera needs picamera2 and libcamera's Python bindings ({missing} could not be imported). "
            "On Raspberry Pi OS: sudo apt install python3-picamera2, and create the virtual environment with "
            "python3 -m venv --system-site-packages so it sees the apt packages"
        ) from None
    try:
        return Picamera2(camera_index)
    except (IndexError, RuntimeError) as error:
        raise CameraError(
            f"could not open camera {camera_index} ({error}); check the ribbon cable and that no other program "
            "uses the camera, and list the cameras with: rpicam-hello --list-cameras"
        ) from None


def capture_still(
    camera: Any,
    *,
    resolution: tuple[int, int] | None = None,
    pixel_format: str = DEFAULT_PIXEL_FORMAT,
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> np.ndarray:
    """Take one still with a picamera2 camera, without a preview window, and return RGB pixels.

    ``resolution`` is (width, height); None keeps the still configuration's
    default, the sensor's full resolution.
    """
    main_stream: dict[str, Any] = {"format": pixel_format}
    if resolution is not None:
        main_stream["size"] = tuple(resolution)
    try:
        configuration = camera.create_still_configuration(main=main_stream, buffer_count=1)
        camera.configure(configuration)
        camera.start(show_preview=False)
    except RuntimeError as error:
        raise CameraError(f"could not start the camera with format {pixel_format} at {resolution}: {error}") from None
    try:
        if warmup_seconds > 0:
            sleep(warmup_seconds)
        frame = camera.capture_array("main")
    finally:
        camera.stop()
    return frame_to_rgb(frame, pixel_format)


def capture_and_score(
    classifier: FractureClassifier,
    camera: Any,
    output_dir: Path,
    *,
    resolution: tuple[int, int] | None = None,
    pixel_format: str = DEFAULT_PIXEL_FORMAT,
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    now: datetime.datetime | None = None,
) -> CaptureResult:
    """Capture a still, save it as ``output_dir/capture-<time>.png`` and score the saved file."""
    pixels = capture_still(
        camera, resolution=resolution, pixel_format=pixel_format, warmup_seconds=warmup_seconds, sleep=sleep
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S-%f")
    image_path = output_dir / f"capture-{stamp}.png"
    Image.fromarray(pixels).save(image_path)
    logger.info("saved the captured %dx%d still to %s", pixels.shape[1], pixels.shape[0], image_path)

    model_input = load_input(image_path, classifier.preprocessing, max_pixels=classifier.max_pixels)
    prediction = classifier.predict_input(model_input)
    return CaptureResult(image_path=image_path, model_input=model_input, prediction=prediction)
