"""Builders for the hostile-input corpus: damaged, odd and hostile image and DICOM files.

Each ``build_*`` function writes one file (or link, folder or FIFO) into the
folder it is given and returns its path. ``CASES`` and ``DICOM_CASES`` pair
each builder with its expected outcome: ``SCORED``, or the ``InputError``
subclass raised and a fragment of its message. The decoder tests check one
file at a time, and the command-line test puts all of them in one folder.

The DICOM builders import pydicom when called, so this module imports
without the ``dicom`` extra.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from edgefrac.errors import (
    ImageTooLargeError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedImageError,
)

SCORED = "scored"
ORIENTATION_TAG = 0x0112
MARKER = "ZZPRIVATEMARKER^Jane"
"""Value of every patient and study field in the DICOM files. No output or log may contain it."""


def gradient(height=64, width=48) -> np.ndarray:
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def jpeg_bytes(pixels=None, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gradient() if pixels is None else pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image | None = None) -> bytes:
    buffer = io.BytesIO()
    (image or Image.fromarray(gradient())).save(buffer, "PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR chunk is rewritten to declare ``width`` x ``height``, CRC fixed."""
    data = bytearray(png_bytes())
    # Signature (8 bytes), then IHDR: length (4), type (4), data (13), CRC (4).
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def build_zero_bytes(folder: Path) -> Path:
    path = folder / "empty.jpg"
    path.write_bytes(b"")
    return path


def build_random_bytes(folder: Path) -> Path:
    path = folder / "noise.jpg"
    path.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def build_html_as_png(folder: Path) -> Path:
    path = folder / "page.png"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    return path


def build_truncated_jpeg(folder: Path) -> Path:
    data = jpeg_bytes(np.random.default_rng(4).integers(0, 256, (128, 128), dtype=np.uint8))
    path = folder / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def build_truncated_png(folder: Path) -> Path:
    data = png_bytes(Image.fromarray(np.random.default_rng(5).integers(0, 256, (128, 128), dtype=np.uint8)))
    path = folder / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    return path


def build_png_header_50000(folder: Path) -> Path:
    path = folder / "claims-50000.png"
    path.write_bytes(png_claiming(50_000, 50_000))
    return path


def build_jpeg_bomb(folder: Path) -> Path:
    # 8,200 x 8,000 = 65.6 megapixels of flat grey compress to a few hundred
    # kilobytes, over the default limit of 64 megapixels.
    path = folder / "bomb.jpg"
    Image.new("L", (8200, 8000), 128).save(path, "JPEG", quality=50)
    return path


def build_sixteen_bit(folder: Path) -> Path:
    path = folder / "gray16.png"
    Image.fromarray((gradient().astype(np.uint16) * 200 + 1000)).save(path)
    return path


def build_one_bit(folder: Path) -> Path:
    path = folder / "bits.png"
    Image.fromarray(gradient() > 128).save(path)
    return path


def build_cmyk(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    Image.new("CMYK", (40, 30), (0, 200, 100, 20)).save(path, "JPEG")
    return path


def build_palette_transparent(folder: Path) -> Path:
    image = Image.fromarray(gradient()).convert("P")
    path = folder / "palette.png"
    image.save(path, transparency=0)
    return path


def build_animated_gif(folder: Path) -> Path:
    frames = [Image.new("L", (20, 20), level) for level in (0, 128, 255)]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def build_multipage_tiff(folder: Path) -> Path:
    pages = [Image.new("L", (20, 20), level) for level in (0, 255)]
    path = folder / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    return path


def build_symlink_loop(folder: Path) -> Path:
    path = folder / "loop.jpg"
    path.symlink_to(path.name)
    return path


def build_broken_symlink(folder: Path) -> Path:
    path = folder / "gone.jpg"
    path.symlink_to("missing-target.jpg")
    return path


def build_directory_named_jpg(folder: Path) -> Path:
    path = folder / "folder.jpg"
    path.mkdir()
    return path


def build_fifo(folder: Path) -> Path:
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return path


def build_non_utf8_name(folder: Path) -> Path:
    path = Path(os.fsdecode(os.fsencode(folder) + b"/r\xf6ntgen.jpg"))
    path.write_bytes(jpeg_bytes())
    return path


def build_non_utf8_name_corrupt(folder: Path) -> Path:
    path = Path(os.fsdecode(os.fsencode(folder) + b"/bad\xff\xfe.png"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return path


def build_newline_name(folder: Path) -> Path:
    path = folder / "two\nlines.jpg"
    path.write_bytes(b"not a jpeg")
    return path


def build_unreadable(folder: Path) -> Path:
    """Write a valid JPEG with mode 000. Root can still read it, so callers check ``os.access``."""
    path = folder / "locked.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    return path


def build_exif_orientations(folder: Path) -> list[Path]:
    """Write one small JPEG per EXIF orientation 1 to 8; all are scored."""
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        path = folder / f"orientation{orientation}.jpg"
        Image.fromarray(gradient()).save(path, "JPEG", quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


CASES = [
    ("zero bytes", build_zero_bytes, UnreadableImageError, "empty"),
    ("random bytes", build_random_bytes, UnreadableImageError, "not a recognised image format"),
    ("html as png", build_html_as_png, UnreadableImageError, "not a recognised image format"),
    ("truncated jpeg", build_truncated_jpeg, TruncatedImageError, "truncated"),
    ("truncated png", build_truncated_png, TruncatedImageError, "truncated"),
    ("png header 50000", build_png_header_50000, ImageTooLargeError, "decompression-bomb"),
    ("jpeg bomb", build_jpeg_bomb, ImageTooLargeError, "8200x8000"),
    ("16-bit", build_sixteen_bit, SCORED, None),
    ("1-bit", build_one_bit, SCORED, None),
    ("cmyk", build_cmyk, SCORED, None),
    ("palette transparency", build_palette_transparent, SCORED, None),
    ("animated gif", build_animated_gif, UnsupportedImageError, "3 frames"),
    ("multi-page tiff", build_multipage_tiff, UnsupportedImageError, "2 frames"),
    ("symlink loop", build_symlink_loop, UnreadableImageError, "symbolic link loop"),
    ("broken symlink", build_broken_symlink, UnreadableImageError, "file not found"),
    ("directory named jpg", build_directory_named_jpg, UnreadableImageError, "is a directory"),
    ("fifo", build_fifo, UnreadableImageError, "not a regular file"),
    ("non-utf8 name", build_non_utf8_name, SCORED, None),
    ("non-utf8 name corrupt", build_non_utf8_name_corrupt, UnreadableImageError, None),
    ("newline in name", build_newline_name, UnreadableImageError, None),
]
"""(case name, builder, expected outcome, message fragment) for each raster case."""


def new_dataset(path, transfer_syntax=None):
    """Return a digital X-ray ``FileDataset`` with patient and study fields set to ``MARKER``.

    ``transfer_syntax`` defaults to Explicit VR Little Endian.
    """
    from pydicom import uid
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian if transfer_syntax is None else transfer_syntax
    dataset = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.PatientName = MARKER
    dataset.PatientID = "ZZPRIVATEMARKER-ID"
    dataset.PatientBirthDate = "19700101"
    dataset.StudyDate = "20240102"
    dataset.StudyDescription = MARKER
    dataset.InstitutionName = MARKER
    return dataset


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=None, **elements):
    """Write ``pixels`` as a DICOM file with the given extra elements; return the path."""
    dataset = new_dataset(path)
    if bits_stored is None:
        bits_stored = pixels.dtype.itemsize * 8
    dataset.set_pixel_data(pixels, photometric, bits_stored)
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def ramp(rows=8, columns=16, top=4095) -> np.ndarray:
    """A 12-bit horizontal ramp from 0 to ``top``, the same on every row."""
    line = np.linspace(0, top, columns).round().astype(np.uint16)
    return np.tile(line, (rows, 1))


def rle_dicom(path):
    """Write the 12-bit ramp compressed with RLE Lossless, which pydicom decodes on its own."""
    from pydicom import uid

    dataset = new_dataset(path)
    dataset.set_pixel_data(ramp(), "MONOCHROME2", 12)
    dataset.compress(uid.RLELossless)
    dataset.save_as(path, enforce_file_format=True)
    return path


def build_dicom_monochrome2(folder: Path) -> Path:
    return write_dicom(folder / "m2.dcm", ramp(), bits_stored=12)


def build_dicom_monochrome1(folder: Path) -> Path:
    return write_dicom(
        folder / "m1.dcm", ramp(), "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=2048
    )


def build_dicom_negative_slope(folder: Path) -> Path:
    return write_dicom(folder / "n.dcm", ramp(), bits_stored=12, RescaleSlope=-1, RescaleIntercept=4095)


def build_dicom_rgb(folder: Path) -> Path:
    return write_dicom(folder / "rgb.dcm", np.zeros((4, 4, 3), np.uint8), "RGB", bits_stored=8)


def build_dicom_multiframe(folder: Path) -> Path:
    return write_dicom(folder / "mf.dcm", np.stack([ramp(), ramp()]), bits_stored=12)


def build_dicom_no_pixel_data(folder: Path) -> Path:
    path = folder / "empty.dcm"
    dataset = new_dataset(path)
    dataset.Rows = 8
    dataset.Columns = 8
    dataset.save_as(path, enforce_file_format=True)
    return path


def build_dicom_without_decoder(folder: Path) -> Path:
    """Write a file in JPEG 2000 Part 2 multi-component, a compressed transfer syntax pydicom cannot decode.

    pydicom 3.0 has no decoder for this syntax at all, so no installed plugin
    changes the outcome and no monkeypatching is needed, which lets the
    command-line test run it in a child process. The encapsulated frame is a
    placeholder because no decoder ever reads it.
    """
    from pydicom import uid
    from pydicom.encaps import encapsulate

    path = folder / "j2k-multicomponent.dcm"
    dataset = new_dataset(path, uid.JPEG2000MC)
    dataset.Rows = 8
    dataset.Columns = 16
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    return path


def build_dicom_truncated(folder: Path) -> Path:
    full = write_dicom(folder / "full.dcm", ramp(rows=64, columns=64), bits_stored=12).read_bytes()
    (folder / "full.dcm").unlink()
    path = folder / "trunc.dcm"
    path.write_bytes(full[:-3000])
    return path


DICOM_CASES = [
    ("dicom monochrome2", build_dicom_monochrome2, SCORED, None),
    ("dicom monochrome1", build_dicom_monochrome1, SCORED, None),
    ("dicom negative slope", build_dicom_negative_slope, SCORED, None),
    ("dicom rgb", build_dicom_rgb, SCORED, None),
    ("dicom multi-frame", build_dicom_multiframe, UnsupportedImageError, "2 frames"),
    ("dicom no pixel data", build_dicom_no_pixel_data, UnreadableImageError, "no pixel data"),
    ("dicom without decoder", build_dicom_without_decoder, UnsupportedImageError, "has no pixel decoder"),
    ("dicom truncated", build_dicom_truncated, UnreadableImageError, None),
]
"""(case name, builder, expected outcome, message fragment) for each DICOM case."""
