"""Decode radiograph files into 8-bit RGB pixels of the model's input size.

One decoder for training, conversion and the device: JPEG (and MPO, whose
first frame is the primary image), PNG, BMP, TIFF, GIF and WebP through
Pillow, plus DICOM through ``edgefrac.dicom``. Every failure is an
``InputError`` subclass whose message is one line naming the file and the
reason, so a batch can record it and go on.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

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

# Pillow formats tried on a file; Pillow's JPEG plugin also opens MPO. Keeping the
# list short means that a renamed EPS file never starts Ghostscript and exotic
# plugins never see hostile bytes.
PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")

# Pillow's truncated-image switch (ImageFile.LOAD_TRUNCATED_IMAGES) is a module
# global read during decoding. Every Pillow decode holds this lock and sets the
# switch itself, so a lenient decode in one thread cannot make a strict decode in
# another thread accept a truncated file. Decodes are therefore serialised per
# process; the batch loop decodes one file at a time anyway.
_decode_lock = threading.Lock()

# Errors Pillow, zlib and struct raise on damaged data (Pillow 13's TIFF plugin
# raises TypeError for missing dimensions). Any other exception is a bug and propagates.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    zlib.error,
    struct.error,
    IndexError,
    KeyError,
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DIRECT_MODES = frozenset({"L", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


def display_path(path: str | os.PathLike) -> str:
    """Return ``path`` as printable one-line text.

    Bytes that are not UTF-8 (kept by Python as surrogate escapes) and control
    characters such as a newline in a file name become backslash escapes. The
    text can then go to a UTF-8 terminal, a CSV cell or a log line unchanged.
    """
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)


def is_dicom(path: Path) -> bool:
    """Return whether ``path`` has a DICOM suffix or the ``DICM`` marker after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return _has_dicom_marker(head)


def load_pixels(
    path: str | os.PathLike,
    size: tuple[int, int],
    resize: ResizeMethod | str = ResizeMethod.BILINEAR,
    *,
    allow_truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` into a ``(height, width, 3)`` uint8 RGB array of ``size`` = (width, height).

    See ``decode_image`` for what happens before the resize.

    Raises:
        InputError: a subclass naming the file and why it cannot be used.
        MissingDependencyError: a DICOM file was given and pydicom is not installed.
    """
    resize = ResizeMethod(resize)
    image = decode_image(path, size, allow_truncated=allow_truncated, max_pixels=max_pixels)
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


def decode_image(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    *,
    allow_truncated: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB Pillow image, before any resize to the model size.

    EXIF orientation is applied, grayscale is copied to three equal channels and
    16-bit or float grayscale is stretched over its own min..max range.
    Transparent areas become black. When ``size`` (width, height) is given,
    large JPEGs are decoded at a reduced DCT scale (draft mode) and large 16-bit
    images are block-averaged, keeping at least twice the larger target side
    along both axes.

    A truncated file raises ``TruncatedImageError`` unless ``allow_truncated``
    is true; then it is decoded with the missing part grey and a warning is logged.

    Raises:
        InputError: a subclass naming the file and why it cannot be used.
        MissingDependencyError: a DICOM file was given and pydicom is not installed.
    """
    path = Path(path)
    printable_path = display_path(path)
    with _open_file(path, printable_path) as handle:
        head = handle.read(132)
        if not head:
            raise UnreadableImageError(f"{printable_path}: file is empty (0 bytes)")
        if path.suffix.lower() in DICOM_SUFFIXES or _has_dicom_marker(head):
            from edgefrac import dicom

            return dicom.load_dicom_image(path, max_pixels=max_pixels)
        handle.seek(0)
        return _decode_raster(handle, printable_path, size, allow_truncated=allow_truncated, max_pixels=max_pixels)


def _has_dicom_marker(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _open_file(path: Path, printable_path: str) -> BinaryIO:
    """Open a regular file for reading, turning each operating-system failure into a one-line InputError."""
    try:
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise UnreadableImageError(f"{printable_path}: is a directory, not an image file")
        if not stat.S_ISREG(status.st_mode):
            # Opening a FIFO or a device could block or read without end.
            raise UnreadableImageError(f"{printable_path}: not a regular file (a pipe, socket or device)")
        return open(path, "rb")
    except FileNotFoundError:
        raise UnreadableImageError(f"{printable_path}: file not found") from None
    except PermissionError:
        raise UnreadableImageError(f"{printable_path}: permission denied; make the file readable") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableImageError(
                f"{printable_path}: symbolic link loop; point the link at a real file"
            ) from None
        reason = os.strerror(error.errno or 0)
        raise UnreadableImageError(f"{printable_path}: cannot open the file ({reason})") from None


def _decode_raster(
    handle: BinaryIO, printable_path: str, size: tuple[int, int] | None, *, allow_truncated: bool, max_pixels: int
) -> Image.Image:
    try:
        return _decode_with_switch(handle, printable_path, size, max_pixels, load_truncated=False)
    except TruncatedImageError:
        if not allow_truncated:
            raise
    handle.seek(0)
    image = _decode_with_switch(handle, printable_path, size, max_pixels, load_truncated=True)
    logger.warning("%s: image data is truncated; scoring it with the missing part grey", printable_path)
    return image


def _decode_with_switch(
    handle: BinaryIO, printable_path: str, size: tuple[int, int] | None, max_pixels: int, *, load_truncated: bool
) -> Image.Image:
    with _decode_lock:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
        try:
            return _decode_pillow(handle, printable_path, size, max_pixels)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode_pillow(
    handle: BinaryIO, printable_path: str, size: tuple[int, int] | None, max_pixels: int
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # The header check below enforces max_pixels; Pillow's own, larger
            # limit still raises DecompressionBombError inside Image.open.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle, formats=PILLOW_FORMATS) as opened:
                _check_header(printable_path, opened, max_pixels)
                return _to_rgb(printable_path, opened, size)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"{printable_path}: the header declares more than twice Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels (decompression-bomb guard); export a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            f"{printable_path}: not a recognised image format (expected JPEG, PNG, BMP, TIFF, GIF, WebP or DICOM)"
        ) from None
    except _DECODE_ERRORS as error:
        message = " ".join(str(error).split())
        if "truncated" in message or isinstance(error, EOFError):
            raise TruncatedImageError(
                f"{printable_path}: image data is truncated ({message or type(error).__name__}); "
                "re-export the file, or allow truncated images (--allow-truncated) to score it "
                "with the missing part grey"
            ) from None
        raise UnreadableImageError(
            f"{printable_path}: image data is corrupt ({type(error).__name__}: {message})"
        ) from None


def _check_header(printable_path: str, image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"{printable_path}: invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{printable_path}: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale the image or raise --max-pixels"
        )
    # An MPO file (a JPEG with extra views from a phone or a stereo camera) opens
    # on its primary image, which is what a viewer shows, so its other frames are ignored.
    frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"{printable_path}: {image.format} file has {frames} frames; "
            "save the one view to score as its own file"
        )


def _reduction_side(size: tuple[int, int] | None) -> int | None:
    # Twice the larger target side, along both axes, keeps enough detail for any
    # EXIF rotation and for the final anti-aliased resize.
    return None if size is None else 2 * max(size)


def _to_rgb(printable_path: str, image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    side = _reduction_side(size)
    if image.format in ("JPEG", "MPO") and side is not None:
        # libjpeg then decodes at 1/2, 1/4 or 1/8 scale and skips most of the work on large films.
        image.draft("L" if image.mode == "L" else "RGB", (side, side))
    image.load()
    image = _apply_exif_orientation(printable_path, image)

    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _stretch_to_8bit(printable_path, image, side)
    if mode == "1":
        return image.convert("L").convert("RGB")
    if mode == "P":
        # convert() honours the palette's transparency (tRNS chunk or GIF transparent index).
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        # Transparent areas become black, the background of a radiograph.
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    if mode in _DIRECT_MODES:
        # NOTE: 16-bit-per-channel RGB PNGs arrive here already cut to 8 bits by
        # Pillow (high byte kept), so their range is not stretched like 16-bit grayscale.
        return image.convert("RGB")
    raise UnsupportedImageError(
        f"{printable_path}: unsupported pixel mode {mode!r}; convert it to 8-bit RGB or grayscale"
    )


def _apply_exif_orientation(printable_path: str, image: Image.Image) -> Image.Image:
    """Rotate or flip by the EXIF Orientation tag; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as error:
        logger.warning(
            "%s: EXIF block is unreadable (%s); using the image as stored, without rotation",
            printable_path,
            type(error).__name__,
        )
        return image


def _stretch_to_8bit(printable_path: str, image: Image.Image, side: int | None) -> Image.Image:
    """Map 16-bit or float grayscale onto 0..255 by its real min..max range, without clipping."""
    values = np.asarray(image)
    if side is not None:
        values = _block_mean(values, min(values.shape[1] // side, values.shape[0] // side))
    finite = np.isfinite(values)
    if not finite.any():
        raise UnsupportedImageError(f"{printable_path}: image contains no finite pixel values")
    values = np.where(finite, values, values[finite].min())
    return Image.fromarray(stretch_array_to_8bit(values), mode="L").convert("RGB")


def _block_mean(values: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks, dropping the edge rows and columns that do not fill one."""
    if factor < 2:
        return values
    height = values.shape[0] // factor * factor
    width = values.shape[1] // factor * factor
    blocks = values[:height, :width].reshape(height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(1, 3), dtype=np.float64)


def stretch_array_to_8bit(values: np.ndarray) -> np.ndarray:
    """Map an array onto uint8 0..255 by its real min..max range (constant arrays become 0)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(scaled).clip(0, 255).astype(np.uint8)
