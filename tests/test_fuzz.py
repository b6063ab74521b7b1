"""Fuzz the image and DICOM loaders with hypothesis: only InputError or MissingDependencyError may escape.

Each target runs a bounded number of examples (``EDGEFRAC_FUZZ_EXAMPLES``,
default 150) with a fixed seed, so a CI run takes seconds and is repeatable.
Set the variable higher and ``EDGEFRAC_FUZZ_SEED`` to another value for a
longer local search. Mutation targets start from valid files of each format,
which reaches far deeper into the decoders than random bytes alone.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from edgefrac.errors import InputError, MissingDependencyError
from edgefrac.images import load_pixels

EXAMPLES = int(os.environ.get("EDGEFRAC_FUZZ_EXAMPLES", "150"))
SEED = int(os.environ.get("EDGEFRAC_FUZZ_SEED", "20240607"))
# Mutated headers may declare large images; this limit keeps each example small.
MAX_PIXELS = 2_000_000
# Patient and study fields of the DICOM seed; no message or log record may quote it.
MARKER = "ZZFUZZMARKER"

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # decode time varies with machine load; max_examples bounds the run instead
    database=None,  # nothing is written outside the test's temporary folder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class RecordTexts(logging.Handler):
    """Keep the formatted text of every log record, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@pytest.fixture(scope="module")
def log_texts():
    handler = RecordTexts()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.getLogger("pydicom").setLevel(logging.DEBUG)
    yield handler.texts
    root.removeHandler(handler)
    root.setLevel(previous_level)
    logging.getLogger("pydicom").setLevel(logging.NOTSET)


def decode_or_input_error(path, log_texts) -> None:
    """Decode ``path``; return on success or a documented error, let anything else fail the test."""
    log_texts.clear()
    try:
        pixels = load_pixels(path, (24, 24), max_pixels=MAX_PIXELS)
    except (InputError, MissingDependencyError) as error:
        assert "\n" not in str(error)
        assert MARKER not in str(error)
        return
    finally:
        assert not any(MARKER in text for text in log_texts)
    assert pixels.shape == (24, 24, 3)


def seed_images() -> dict[str, bytes]:
    """Small valid files of every raster format the decoder accepts."""
    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, (20, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    seeds = {}

    def save(name, image, format_name, **options):
        buffer = io.BytesIO()
        image.save(buffer, format_name, **options)
        seeds[name] = buffer.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    save("rgb.jpg", Image.fromarray(rgb), "JPEG", exif=exif.tobytes())
    save("gray.jpg", Image.fromarray(gray), "JPEG", progressive=True)
    save("rgb.png", Image.fromarray(rgb), "PNG")
    save("gray16.png", Image.fromarray(gray.astype(np.uint16) * 250), "PNG")
    save("palette.png", Image.fromarray(rgb).convert("P"), "PNG", transparency=3)
    save("gray.bmp", Image.fromarray(gray), "BMP")
    save("rgb.tif", Image.fromarray(rgb), "TIFF", compression="tiff_deflate")
    save("gray16.tif", Image.fromarray(gray.astype(np.uint16) * 250), "TIFF")
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"), "TIFF")
    save("gray.gif", Image.fromarray(gray), "GIF")
    save("rgb.webp", Image.fromarray(rgb), "WEBP")
    return seeds


def seed_dicom() -> bytes | None:
    try:
        from pydicom import uid
        from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    except ImportError:
        return None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset = FileDataset("seed.dcm", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientName = MARKER
    dataset.PatientID = MARKER
    dataset.StudyDescription = MARKER
    dataset.set_pixel_data(np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30, "MONOCHROME1", 12)
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -100
    dataset.WindowCenter = 1500
    dataset.WindowWidth = 2000
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SEEDS = seed_images()
DICOM_SEED = seed_dicom()
if DICOM_SEED is not None:
    SEEDS["seed.dcm"] = DICOM_SEED


@st.composite
def mutated(draw, seeds: dict[str, bytes]):
    """A seed file with a few bytes overwritten, a block repeated or removed, and maybe truncated."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data) - 1))
        length = draw(st.integers(1, 64))
        if draw(st.booleans()):
            data[start:start] = data[start : start + length]
        else:
            del data[start : start + length]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return name, bytes(data)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@seed(SEED)
@FUZZ_SETTINGS
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".png", ".tif", ".dcm", ".bin"]))
def test_random_bytes(fuzz_dir, log_texts, data, suffix):
    path = fuzz_dir / f"random{suffix}"
    path.write_bytes(data)
    decode_or_input_error(path, log_texts)


@seed(SEED)
@FUZZ_SETTINGS
@given(case=mutated(SEEDS))
def test_mutated_files(fuzz_dir, log_texts, case):
    name, data = case
    path = fuzz_dir / f"mutated-{name}"
    path.write_bytes(data)
    decode_or_input_error(path, log_texts)


@pytest.mark.skipif(DICOM_SEED is None, reason="pydicom is not installed")
@seed(SEED)
@FUZZ_SETTINGS
@given(case=mutated({"seed.dcm": DICOM_SEED or b"\0"}), preamble=st.booleans())
def test_mutated_dicom(fuzz_dir, log_texts, case, preamble):
    # Mutations after the 132-byte preamble and marker keep the file recognised
    # as DICOM, so the damaged bytes reach the dataset parser instead of failing the marker check.
    _, data = case
    if preamble:
        data = DICOM_SEED[:132] + data[132:]
    path = fuzz_dir / "mutated.dcm"
    path.write_bytes(data)
    decode_or_input_error(path, log_texts)
