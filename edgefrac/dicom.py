"""Decode single-frame DICOM radiographs into 8-bit RGB images (needs the ``dicom`` extra: pydicom).

Grayscale images go through the DICOM display chain in its order. First comes
the modality LUT or rescale slope/intercept, then the VOI LUT or window
centre/width (the first one listed), then an 8-bit stretch. MONOCHROME1
(white means low values) is inverted last. RGB and YBR images are scored
too, because secondary captures and photographs of films arrive that way;
pydicom converts YBR to RGB and no windowing applies to them.

Privacy: only the image-pixel, modality-LUT and VOI-LUT elements listed in
``_PIXEL_TAGS`` are parsed, so patient and study elements are never decoded.
A damaged file can still make pydicom misread element boundaries and quote
stray bytes, which may hold patient data, in its warnings, log records and
exception messages. So while a file is read, pydicom's warnings and its
``pydicom`` logger are silenced, and errors carry only pydicom's exception
type, never its message. Messages name the file path, which is the user's
own choice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from edgefrac.errors import (
    ImageTooLargeError,
    MissingDependencyError,
    UnreadableImageError,
    UnsupportedImageError,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'edgefrac[dicom]'"

_PIXEL_TAGS = [
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00280102,  # HighBit
    0x00280103,  # PixelRepresentation
    0x00281050,  # WindowCenter
    0x00281051,  # WindowWidth
    0x00281052,  # RescaleIntercept
    0x00281053,  # RescaleSlope
    0x00281056,  # VOILUTFunction
    0x00283000,  # ModalityLUTSequence
    0x00283010,  # VOILUTSequence
    0x7FE00001,  # ExtendedOffsetTable
    0x7FE00002,  # ExtendedOffsetTableLengths
    0x7FE00008,  # FloatPixelData
    0x7FE00009,  # DoubleFloatPixelData
    0x7FE00010,  # PixelData
]

_GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})

_UID_PATTERN = re.compile(r"[0-9.]{1,64}")

# Deflated Explicit VR Little Endian is inflated whole by pydicom without a size
# limit, so a small file could expand to gigabytes before any check runs.
_DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"

# pydicom raises a wide range of exception types on damaged or hostile files.
# Only these, plus pydicom's own BytesLengthException, count as bad input;
# anything else is a bug and propagates.
_PYDICOM_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    ArithmeticError,
    struct.error,
    zlib.error,
)


def load_dicom_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> Image.Image:
    """Decode a single-frame DICOM file into an 8-bit RGB Pillow image.

    ``max_pixels`` (default: ``edgefrac.images.DEFAULT_MAX_PIXELS``) bounds
    Rows x Columns before any pixel data is decoded.

    Raises:
        MissingDependencyError: pydicom is not installed.
        InputError: a subclass naming the file and why it cannot be used.
    """
    from edgefrac.images import DEFAULT_MAX_PIXELS, display_path, stretch_array_to_8bit

    path = Path(path)
    printable_path = display_path(path)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    pydicom = _import_pydicom(printable_path)

    with _quiet_pydicom(printable_path):
        dataset = _read_dataset(pydicom, path, printable_path)
        photometric = _check_layout(pydicom, dataset, printable_path, limit)
        pixels = _decode_pixels(pydicom, dataset, printable_path)
        if photometric in _GRAYSCALE:
            gray = _grayscale_to_8bit(pydicom, dataset, pixels, printable_path)

    if photometric in _COLOUR:
        if pixels.dtype != np.uint8:
            pixels = stretch_array_to_8bit(pixels)
        return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")

    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L").convert("RGB")


def _import_pydicom(printable_path: str):
    try:
        import pydicom
        import pydicom.pixels
    except ImportError:
        raise MissingDependencyError(
            f"{printable_path}: reading DICOM files needs pydicom, which is not installed; run {INSTALL_HINT}"
        ) from None
    return pydicom


class _DropRecords(logging.Filter):
    """Logger filter that drops every record and counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.dropped += 1
        return False


@contextlib.contextmanager
def _quiet_pydicom(printable_path: str) -> Iterator[None]:
    """Silence pydicom's warnings and its ``pydicom`` logger, whose texts may quote element bytes."""
    pydicom_logger = logging.getLogger("pydicom")
    dropped = _DropRecords()
    pydicom_logger.addFilter(dropped)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_logger.removeFilter(dropped)
        if dropped.dropped:
            logger.debug(
                "%s: dropped %d pydicom log records about non-conforming elements", printable_path, dropped.dropped
            )


def _bad_input_errors(pydicom) -> tuple[type[BaseException], ...]:
    return (*_PYDICOM_ERRORS, pydicom.errors.BytesLengthException)


def _pydicom_reason(error: BaseException) -> str:
    """Name a pydicom exception by type only: its message may quote bytes of misread elements."""
    return type(error).__name__


def _read_dataset(pydicom, path: Path, printable_path: str):
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        transfer_syntax = meta.get("TransferSyntaxUID")
        if transfer_syntax is None:
            raise UnreadableImageError(f"{printable_path}: DICOM file meta has no Transfer Syntax UID")
        if str(transfer_syntax) == _DEFLATED_TRANSFER_SYNTAX:
            raise UnsupportedImageError(
                f"{printable_path}: the Deflated Explicit VR Little Endian transfer syntax is not supported "
                "(it cannot be inflated with a size limit); re-export the image uncompressed"
            )
        return pydicom.dcmread(path, specific_tags=_PIXEL_TAGS)
    except pydicom.errors.InvalidDicomError:
        raise UnreadableImageError(
            f"{printable_path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)"
        ) from None
    except _bad_input_errors(pydicom) as error:
        raise UnreadableImageError(f"{printable_path}: DICOM file is corrupt ({_pydicom_reason(error)})") from None


def _check_layout(pydicom, dataset, printable_path: str, max_pixels: int) -> str:
    """Check what can be checked before decoding; return the photometric interpretation."""
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise UnsupportedImageError(
                f"{printable_path}: DICOM float pixel data (a parametric map) is not a radiograph; "
                "export the image itself"
            )
        raise UnreadableImageError(
            f"{printable_path}: DICOM file contains no pixel data (a report, presentation state or DICOMDIR?)"
        )
    try:
        rows = int(dataset.get("Rows") or 0)
        columns = int(dataset.get("Columns") or 0)
        frames = int(dataset.get("NumberOfFrames") or 1)
        photometric = str(dataset.get("PhotometricInterpretation") or "").strip().upper()
    except _bad_input_errors(pydicom) as error:
        raise UnreadableImageError(
            f"{printable_path}: DICOM image header is corrupt ({_pydicom_reason(error)})"
        ) from None

    if rows <= 0 or columns <= 0:
        raise UnreadableImageError(f"{printable_path}: DICOM image size {columns}x{rows} is invalid")
    if frames > 1:
        raise UnsupportedImageError(
            f"{printable_path}: DICOM file has {frames} frames; "
            "export the one view to score as a single-frame file"
        )
    if rows * columns > max_pixels:
        raise ImageTooLargeError(
            f"{printable_path}: DICOM image of {columns}x{rows} pixels exceeds the limit of {max_pixels:,} "
            "(decompression-bomb guard); downscale the image or raise --max-pixels"
        )
    if photometric not in _GRAYSCALE | _COLOUR:
        shown_value = photometric[:32] or "missing"
        raise UnsupportedImageError(
            f"{printable_path}: DICOM photometric interpretation {shown_value!r} is not supported "
            "(expected MONOCHROME1, MONOCHROME2, RGB or YBR)"
        )
    return photometric


def _decode_pixels(pydicom, dataset, printable_path: str) -> np.ndarray:
    transfer_syntax = pydicom.uid.UID(str(dataset.file_meta.TransferSyntaxUID))
    try:
        decoder = pydicom.pixels.get_decoder(transfer_syntax)
    except _bad_input_errors(pydicom):
        # A damaged file meta can make the UID value swallow later bytes, so only
        # a well-formed UID (digits and dots) is echoed.
        uid_text = str(transfer_syntax)
        shown_uid = repr(uid_text) if _UID_PATTERN.fullmatch(uid_text) else "(malformed UID)"
        raise UnsupportedImageError(
            f"{printable_path}: DICOM transfer syntax {shown_uid} has no pixel decoder in pydicom; "
            "re-export the image uncompressed"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no decoder plugin"
        raise UnsupportedImageError(
            f"{printable_path}: no decoder is installed for the DICOM transfer syntax {transfer_syntax.name} "
            f"({missing}); run {INSTALL_HINT}"
        )
    try:
        return dataset.pixel_array
    except _bad_input_errors(pydicom) as error:
        raise UnreadableImageError(
            f"{printable_path}: DICOM pixel data cannot be decoded ({_pydicom_reason(error)})"
        ) from None


def _grayscale_to_8bit(pydicom, dataset, pixels: np.ndarray, printable_path: str) -> np.ndarray:
    """Apply the modality LUT and the VOI LUT or window, then map the result onto 0..255."""
    from edgefrac.images import stretch_array_to_8bit

    processing = pydicom.pixels
    if pixels.ndim != 2:
        raise UnsupportedImageError(
            f"{printable_path}: DICOM grayscale pixel data has shape {pixels.shape}; expected rows x columns"
        )
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            values = processing.apply_modality_lut(pixels, dataset)
            output_range = _window_output_range(processing, dataset)
            values = processing.apply_voi_lut(values, dataset)
    except _bad_input_errors(pydicom) as error:
        raise UnsupportedImageError(
            f"{printable_path}: DICOM modality or VOI LUT cannot be applied ({_pydicom_reason(error)})"
        ) from None

    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UnsupportedImageError(f"{printable_path}: DICOM rescale gives non-finite pixel values")
    if output_range is None:
        # A VOI LUT, or no VOI at all: stretch over the values actually present.
        return stretch_array_to_8bit(values)

    low, high = output_range
    if low == high:
        return np.zeros(values.shape, dtype=np.uint8)
    # The window's own output range maps onto 0..255, so a window wider than the
    # data keeps the contrast the window specifies. With a negative rescale slope
    # low > high, and the formula still sends the window's lower edge to 0.
    scaled = (values - low) * (255.0 / (high - low))
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def _window_output_range(processing, dataset) -> tuple[float, float] | None:
    """Return the (lower edge, upper edge) outputs of the window, or None when a VOI LUT or nothing applies.

    pydicom's apply_voi_lut prefers a valid VOI LUT Sequence over the window,
    so this follows the same rule. The edges come from windowing -inf and +inf
    with pydicom itself, which covers LINEAR, LINEAR_EXACT and SIGMOID alike.
    """
    sequence = dataset.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None:
        return None
    if dataset.get("WindowCenter") is None or dataset.get("WindowWidth") is None:
        return None
    edges = processing.apply_windowing(np.array([-np.inf, np.inf]), dataset)
    return float(edges[0]), float(edges[1])
