"""DICOM decoding: modality LUT, VOI window and LUT, MONOCHROME1, colour, refused layouts, privacy.

Every DICOM file here is written by the builders in ``corpus`` with pydicom
and carries a PatientName/PatientID/StudyDescription marker, which must never
appear in an error message or a log record.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom import uid  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from corpus import DICOM_CASES, SCORED, new_dataset, ramp, rle_dicom, write_dicom  # noqa: E402
from edgefrac import dicom  # noqa: E402
from edgefrac.errors import (  # noqa: E402
    ImageTooLargeError,
    InputError,
    MissingDependencyError,
    UnreadableImageError,
    UnsupportedImageError,
)
from edgefrac.images import decode_image, load_pixels  # noqa: E402

def gray_of(image) -> np.ndarray:
    return np.asarray(image)[..., 0].astype(int)


def test_monochrome2_stretched_to_full_range(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", ramp(), bits_stored=12)
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray[0, 0] == 0
    assert gray[0, -1] == 255


def test_output_is_rgb_with_equal_channels(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", ramp(), bits_stored=12)
    pixels = np.asarray(dicom.load_dicom_image(path))
    assert pixels.shape == (8, 16, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all()
    assert (pixels[..., 1] == pixels[..., 2]).all()


def test_monochrome1_inverted(tmp_path):
    plain = gray_of(dicom.load_dicom_image(write_dicom(tmp_path / "m2.dcm", ramp(), bits_stored=12)))
    inverted = gray_of(
        dicom.load_dicom_image(write_dicom(tmp_path / "m1.dcm", ramp(), "MONOCHROME1", bits_stored=12))
    )
    assert (inverted == 255 - plain).all()


def test_monochrome1_inverted_after_window(tmp_path):
    # Window 1024..3072 of the 0..4095 ramp: below the window is black for
    # MONOCHROME2 and so white for MONOCHROME1, whatever the window does.
    path = write_dicom(
        tmp_path / "m1.dcm", ramp(), "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=2048
    )
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray[0, 0] == 255
    assert gray[0, -1] == 0
    assert 100 < gray[0, 8] < 155


def test_window_clips_outside_values(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", ramp(), bits_stored=12, WindowCenter=2048, WindowWidth=2048)
    gray = gray_of(dicom.load_dicom_image(path))
    values = ramp()[0]
    assert (gray[0, values <= 1024] == 0).all()
    assert (gray[0, values >= 3072] == 255).all()


def test_window_wider_than_data_keeps_contrast(tmp_path):
    # Data 0..1000 under a 0..4000 window fills only the lower quarter of 0..255,
    # where a min..max stretch would have used the whole range.
    path = write_dicom(
        tmp_path / "w.dcm", ramp(top=1000), bits_stored=12, WindowCenter=2000, WindowWidth=4000
    )
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray.max() <= 70


def test_rescale_slope_intercept_before_window(tmp_path):
    # Stored 0..4095 with slope 2, intercept -1000 gives -1000..7190; the window
    # 2000..4000 in rescaled units is stored 1500..2500.
    path = write_dicom(
        tmp_path / "r.dcm",
        ramp(columns=4096, rows=1),
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=2000,
    )
    gray = gray_of(dicom.load_dicom_image(path))[0]
    assert gray[1499] == 0
    assert gray[2501] == 255
    assert 120 <= gray[2000] <= 135


def test_negative_slope_inverts_values(tmp_path):
    plain = gray_of(
        dicom.load_dicom_image(
            write_dicom(tmp_path / "p.dcm", ramp(), bits_stored=12, RescaleSlope=1, RescaleIntercept=0)
        )
    )
    negative = gray_of(
        dicom.load_dicom_image(
            write_dicom(tmp_path / "n.dcm", ramp(), bits_stored=12, RescaleSlope=-1, RescaleIntercept=4095)
        )
    )
    assert (negative == 255 - plain).all()


def test_negative_slope_with_window(tmp_path):
    # Rescaled value = 4095 - stored. The window 0..2048 (rescaled) covers
    # stored 2047..4095, and low rescaled values (high stored) are black.
    path = write_dicom(
        tmp_path / "n.dcm",
        ramp(),
        bits_stored=12,
        RescaleSlope=-1,
        RescaleIntercept=4095,
        WindowCenter=1024,
        WindowWidth=2048,
    )
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray[0, -1] == 0
    assert gray[0, 0] == 255


def test_voi_lut_sequence_applied(tmp_path):
    # An inverting 8-bit VOI LUT over stored values 0..4095.
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    # LUT Data has the ambiguous VR "US or OW"; US is given explicitly.
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(255, 0, 4096).round()])
    path = write_dicom(tmp_path / "lut.dcm", ramp(), bits_stored=12, VOILUTSequence=[item])
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray[0, 0] == 255
    assert gray[0, -1] == 0


def test_signed_pixels_decoded(tmp_path):
    pixels = (ramp().astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12)
    gray = gray_of(dicom.load_dicom_image(path))
    assert gray[0, 0] == 0
    assert gray[0, -1] == 255


def test_rgb_scored_as_stored(tmp_path):
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[:, 5:, 2] = 90
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", bits_stored=8)
    pixels = np.asarray(dicom.load_dicom_image(path))
    assert (pixels == rgb).all()


def test_multiframe_rejected(tmp_path):
    frames = np.stack([ramp(), ramp()])
    path = write_dicom(tmp_path / "multi.dcm", frames, bits_stored=12)
    with pytest.raises(UnsupportedImageError, match="2 frames"):
        dicom.load_dicom_image(path)


def test_missing_pixel_data_rejected(tmp_path):
    path = tmp_path / "nopixels.dcm"
    dataset = new_dataset(path)
    dataset.Rows = 8
    dataset.Columns = 8
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableImageError, match="no pixel data"):
        dicom.load_dicom_image(path)


def test_oversized_header_rejected(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", ramp(), bits_stored=12)
    with pytest.raises(ImageTooLargeError, match="16x8"):
        dicom.load_dicom_image(path, max_pixels=100)


def test_palette_colour_rejected(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", ramp(), bits_stored=12, PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(UnsupportedImageError, match="PALETTE COLOR"):
        dicom.load_dicom_image(path)


def test_not_dicom_with_dcm_suffix(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"<html>not a scan</html>")
    with pytest.raises(UnreadableImageError, match="not a DICOM file"):
        dicom.load_dicom_image(path)


def test_truncated_pixel_data_rejected(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", ramp(rows=64, columns=64), bits_stored=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    with pytest.raises(InputError):
        dicom.load_dicom_image(path)


def test_compressed_with_decoder_scored(tmp_path):
    gray = gray_of(dicom.load_dicom_image(rle_dicom(tmp_path / "rle.dcm")))
    assert gray[0, -1] == 255


def test_compressed_without_decoder_rejected(tmp_path, monkeypatch):
    # Simulate an install without any RLE plugin by emptying the decoder's
    # plugin table for this test (monkeypatch restores it afterwards).
    decoder = pydicom.pixels.get_decoder(uid.RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    path = rle_dicom(tmp_path / "rle.dcm")
    with pytest.raises(UnsupportedImageError, match="RLE Lossless") as raised:
        dicom.load_dicom_image(path)
    assert "edgefrac[dicom]" in str(raised.value)


def test_missing_pydicom_names_extra(tmp_path, monkeypatch):
    path = write_dicom(tmp_path / "plain.dcm", ramp(), bits_stored=12)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgefrac\[dicom\]'"):
        dicom.load_dicom_image(path)


def test_dicom_without_suffix_detected(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", ramp(), bits_stored=12)
    renamed = path.rename(tmp_path / "scan.jpg")
    pixels = load_pixels(renamed, (16, 8), "nearest")
    assert pixels[0, -1, 0] == 255


def test_dicom_through_decode_image(tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", ramp(), "MONOCHROME1", bits_stored=12)
    image = decode_image(path)
    assert image.mode == "RGB"
    assert image.size == (16, 8)


@pytest.mark.parametrize("name, build, expected, fragment", DICOM_CASES, ids=[case[0] for case in DICOM_CASES])
def test_corpus_case_outcome(tmp_path, name, build, expected, fragment):
    path = build(tmp_path)
    try:
        outcome = load_pixels(path, (32, 32))
    except InputError as error:
        outcome = error
    if expected is SCORED:
        assert isinstance(outcome, np.ndarray), outcome
        assert outcome.shape == (32, 32, 3)
        return
    assert type(outcome) is expected
    message = str(outcome)
    assert message.startswith(str(path) + ": ")
    assert "\n" not in message
    assert "ZZPRIVATEMARKER" not in message
    if fragment is not None:
        assert fragment in message


def privacy_cases(tmp_path):
    """Build every DICOM case once; return (name, path, extra kwargs) rows."""
    cases = [
        ("monochrome2", write_dicom(tmp_path / "m2.dcm", ramp(), bits_stored=12), {}),
        (
            "monochrome1",
            write_dicom(
                tmp_path / "m1.dcm", ramp(), "MONOCHROME1", bits_stored=12, WindowCenter=2048, WindowWidth=2048
            ),
            {},
        ),
        (
            "negative slope",
            write_dicom(tmp_path / "n.dcm", ramp(), bits_stored=12, RescaleSlope=-1, RescaleIntercept=4095),
            {},
        ),
        ("rgb", write_dicom(tmp_path / "rgb.dcm", np.zeros((4, 4, 3), np.uint8), "RGB", bits_stored=8), {}),
        ("multi-frame", write_dicom(tmp_path / "mf.dcm", np.stack([ramp(), ramp()]), bits_stored=12), {}),
        ("too large", write_dicom(tmp_path / "big.dcm", ramp(), bits_stored=12), {"max_pixels": 10}),
        (
            "palette",
            write_dicom(tmp_path / "pal.dcm", ramp(), bits_stored=12, PhotometricInterpretation="PALETTE COLOR"),
            {},
        ),
        (
            "bad window",
            write_dicom(tmp_path / "bw.dcm", ramp(), bits_stored=12, WindowCenter=5, WindowWidth=0),
            {},
        ),
        ("rle", rle_dicom(tmp_path / "rle.dcm"), {}),
    ]
    empty = new_dataset(tmp_path / "empty.dcm")
    empty.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    cases.append(("no pixel data", tmp_path / "empty.dcm", {}))
    truncated = tmp_path / "trunc.dcm"
    full = write_dicom(tmp_path / "full.dcm", ramp(rows=64, columns=64), bits_stored=12).read_bytes()
    truncated.write_bytes(full[:-3000])
    cases.append(("truncated", truncated, {}))
    return cases


def test_no_patient_field_in_messages_or_logs(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    decoder = pydicom.pixels.get_decoder(uid.RLELossless)
    outcomes = {}
    for name, path, kwargs in privacy_cases(tmp_path):
        try:
            dicom.load_dicom_image(path, **kwargs)
            outcomes[name] = "scored"
        except InputError as error:
            outcomes[name] = str(error)
    with monkeypatch.context() as patch:
        patch.setattr(decoder, "_available", {})
        try:
            dicom.load_dicom_image(tmp_path / "rle.dcm")
            outcomes["no decoder"] = "scored"
        except InputError as error:
            outcomes["no decoder"] = str(error)

    assert outcomes["monochrome2"] == "scored"
    assert outcomes["multi-frame"] != "scored"
    assert outcomes["no decoder"] != "scored"
    for name, outcome in outcomes.items():
        assert "ZZPRIVATEMARKER" not in outcome, name
        assert "\n" not in outcome, name
    assert "ZZPRIVATEMARKER" not in caplog.text


def test_messages_name_the_file(tmp_path):
    for name, path, kwargs in privacy_cases(tmp_path):
        try:
            dicom.load_dicom_image(path, **kwargs)
        except InputError as error:
            assert str(error).startswith(str(path)), name


def test_unknown_transfer_syntax_rejected(tmp_path):
    path = tmp_path / "odd.dcm"
    dataset = new_dataset(path)
    dataset.set_pixel_data(ramp(), "MONOCHROME2", 12)
    dataset.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    # Swap the Explicit VR Little Endian UID in the file meta for another of the same length.
    path.write_bytes(data.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.1\x00", 1))
    with pytest.raises(UnsupportedImageError, match=r"'1\.2\.840\.99999\.1\.2\.1' has no pixel decoder"):
        dicom.load_dicom_image(path)


def test_misread_meta_quotes_nothing(tmp_path, caplog):
    # Lengthen the Transfer Syntax UID element so its value swallows the rest of
    # the file, patient fields included. pydicom then warns and logs that value.
    caplog.set_level(logging.DEBUG)
    path = write_dicom(tmp_path / "plain.dcm", ramp(), bits_stored=12)
    data = path.read_bytes()
    header = b"\x02\x00\x10\x00UI"
    start = data.index(header) + len(header)
    path.write_bytes(data[:start] + (len(data) - start - 2).to_bytes(2, "little") + data[start + 2 :])
    with pytest.raises(InputError) as raised:
        dicom.load_dicom_image(path)
    assert "ZZPRIVATEMARKER" not in str(raised.value)
    assert "ZZPRIVATEMARKER" not in caplog.text
