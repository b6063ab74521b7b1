"""Decode radiograph files into 8-bit RGB pixels of the model's input size.

One decoder for training, conversion and the device: JPEG, PNG, BMP, TIFF
(and anything else Pillow opens as a single frame) plus DICOM through
``edgefrac.dicom``. Every failure is an ``InputError`` subclass whose message
says what is wrong with the file, so a batch can record it and go on.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from edgefrac.errors import (
    ImageTooLargeError,
    InputError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedImageError,
)
from edgefrac.preprocessing import PreprocessConfig, ResizeMethod, to_model_input

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
"""Decompression-bomb limit: a 43x35 cm detector at 100 um is about 15 megapixels."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})

# Pillow's truncated-image switch is process-wide, so lenient decodes hold this lock.
_truncated_switch = threading.Lock()

# Errors Pillow and zlib raise on damaged data; everything else is a bug and propagates.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, IndexError, KeyError)


def is_dicom(path: Path) -> bool:
    """Return whether ``path`` has a DICOM suffix or the ``DICM`` preamble marker."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def load_pixels(
    path: str | os.PathLike,
    size: tuple[int, int],
    resize: ResizeMethod | str = ResizeMethod.BILINEAR,
    *,
    allow_truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` into a ``(height, width, 3)`` uint8 RGB array of ``size`` = (width, height).

    EXIF orientation is applied, grayscale is copied to three channels and
    16-bit data is stretched over its own min..max range. Large JPEGs are
    decoded at a reduced DCT scale (draft mode) close to the target size.

    Raises:
        InputError: a subclass naming why this file cannot be used.
    """
    path = Path(path)
    resize = ResizeMethod(resize)
    if path.is_dir():
        raise UnreadableImageError(f"{path} is a directory, not an image file")
    if is_dicom(path):
        from edgefrac import dicom

        image = dicom.load_dicom_image(path)
    else:
        image = _decode(path, size, allow_truncated=allow_truncated, max_pixels=max_pixels)
    image = image.resize(size, resize.pillow_filter, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def load_input(
    path: str | os.PathLike,
    config: PreprocessConfig,
    *,
    allow_truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode and scale one file into the float32 ``(H, W, C)`` model input ``config`` describes."""
    pixels = load_pixels(
        path, config.size, config.resize, allow_truncated=allow_truncated, max_pixels=max_pixels
    )
    return to_model_input(pixels, config)


def _decode(path: Path, size: tuple[int, int], *, allow_truncated: bool, max_pixels: int) -> Image.Image:
    try:
        return _decode_strict(path, size, max_pixels)
    except TruncatedImageError:
        if not allow_truncated:
            raise
    with _truncated_switch:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            image = _decode_strict(path, size, max_pixels)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    logger.warning("%s is truncated; scoring it with the missing part filled grey", path)
    return image


def _decode_strict(path: Path, size: tuple[int, int], max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_header(path, opened, max_pixels)
                return _to_rgb(path, opened, size)
    except InputError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"{path}: the header declares more pixels than Pillow's decompression-bomb limit ({error}); "
            "export a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            f"{path}: not a recognised image format (expected JPEG, PNG, BMP, TIFF or DICOM)"
        ) from None
    except PermissionError:
        raise UnreadableImageError(f"{path}: permission denied; make the file readable") from None
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: file not found") from None
    except _DECODE_ERRORS as error:
        message = str(error)
        if "truncated" in message or isinstance(error, EOFError):
            raise TruncatedImageError(
                f"{path}: image data is truncated ({message}); re-export the file, "
                "or pass --allow-truncated to score it with the missing part grey"
            ) from None
        raise UnreadableImageError(f"{path}: image data is corrupt ({type(error).__name__}: {message})") from None


def _check_header(path: Path, image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"{path}: invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{path}: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale the image or raise --max-pixels"
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"{path}: {image.format} file has {frames} frames; export the one view to score as its own file"
        )


def _to_rgb(path: Path, image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.format == "JPEG":
        # A square request twice the larger target side keeps enough detail for any
        # EXIF rotation and lets libjpeg skip most of the work on large films.
        side = 2 * max(size)
        image.draft("L" if image.mode == "L" else "RGB", (side, side))
    image.load()
    image = ImageOps.exif_transpose(image)

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _stretch_to_8bit(path, image)
    if mode == "1":
        return image.convert("L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # Transparent areas become black, the background of a radiograph.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if mode in ("L", "RGB", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise UnsupportedImageError(f"{path}: unsupported pixel mode {mode!r}; convert it to 8-bit RGB or grayscale")


def _stretch_to_8bit(path: Path, image: Image.Image) -> Image.Image:
    """Map 16-bit or float grayscale onto 0..255 by its real min..max range, without clipping."""
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise UnsupportedImageError(f"{path}: image holds no finite pixel values")
    low, high = float(finite.min()), float(finite.max())
    if high > low:
        values = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    else:
        values = np.zeros_like(values)
    gray = Image.fromarray(np.rint(values).clip(0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def stretch_array_to_8bit(values: np.ndarray) -> np.ndarray:
    """Map an array onto uint8 0..255 by its real min..max range (constant arrays become 0)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).clip(0, 255).astype(np.uint8)
