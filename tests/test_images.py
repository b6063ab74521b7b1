"""Image decoding: formats, pixel modes, EXIF orientation, reduced-scale decoding, truncation and size limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from edgefrac import images
from edgefrac.errors import ImageTooLargeError, TruncatedImageError, UnreadableImageError
from edgefrac.images import decode_image, display_path, load_input, load_pixels
from edgefrac.preprocessing import PreprocessConfig, ValueScaling

ORIENTATION_TAG = 0x0112


def blocks(height=32, width=48, block=16) -> np.ndarray:
    """An asymmetric grayscale image of constant 16x16 blocks, each a different level."""
    rows, columns = height // block, width // block
    levels = np.arange(rows * columns).reshape(rows, columns) * (240 // (rows * columns)) + 10
    return np.kron(levels, np.ones((block, block))).astype(np.uint8)


def save_jpeg(path, pixels, orientation=None, **options):
    image = Image.fromarray(pixels)
    if orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = orientation
        options["exif"] = exif.tobytes()
    image.save(path, "JPEG", quality=95, **options)
    return path


def decoded(path, size=None, **options) -> np.ndarray:
    return np.asarray(decode_image(path, size, **options))


# EXIF orientation -> the displayed image as a function of the stored array.
DISPLAYED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}


def test_jpeg_rgb_decoded(tmp_path):
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[..., 0] = 200
    path = save_jpeg(tmp_path / "red.jpg", pixels)
    out = decoded(path)
    assert out.shape == (32, 48, 3)
    assert abs(int(out[16, 24, 0]) - 200) <= 3


def test_grayscale_jpeg_three_equal_channels(tmp_path):
    path = save_jpeg(tmp_path / "gray.jpg", blocks())
    out = decoded(path)
    assert out.shape == (32, 48, 3)
    assert (out[..., 0] == out[..., 1]).all()
    assert (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".gif", ".webp"])
def test_lossless_formats_round_trip(tmp_path, suffix):
    path = tmp_path / f"blocks{suffix}"
    options = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(blocks()).save(path, **options)
    out = decoded(path)
    assert (out[..., 0] == blocks()).all()


def test_sixteen_bit_png_uses_real_range(tmp_path):
    values = np.linspace(1000, 5000, 48).round().astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(np.tile(values, (4, 1))).save(path)
    out = decoded(path)[0, :, 0].astype(int)
    assert out[0] == 0
    assert out[-1] == 255
    # Linear in the stored value: the midpoint 3000 lands on 127 or 128.
    assert abs(out[24] - (int(values[24]) - 1000) * 255 / 4000) <= 1


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_tiff_stretched(tmp_path, mode):
    values = np.tile(np.linspace(100, 60000, 32).round().astype(np.uint16), (4, 1))
    path = tmp_path / "gray16.tif"
    Image.fromarray(values).convert(mode).save(path) if mode != "I;16" else Image.fromarray(values).save(path)
    out = decoded(path)[0, :, 0]
    assert out[0] == 0
    assert out[-1] == 255


def test_float_tiff_stretched(tmp_path):
    values = np.tile(np.linspace(-2.5, 7.5, 32, dtype=np.float32), (4, 1))
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)
    out = decoded(path)[0, :, 0]
    assert out[0] == 0
    assert out[-1] == 255


def test_large_sixteen_bit_reduced_before_stretch(tmp_path):
    values = np.tile(np.linspace(0, 65535, 2000).astype(np.uint16), (1000, 1))
    path = tmp_path / "big16.png"
    Image.fromarray(values).save(path)
    # Twice the larger target side is 200, so 2000x1000 is block-averaged by 5.
    image = decode_image(path, (100, 100))
    assert image.size == (400, 200)


def test_rgba_transparent_becomes_black(tmp_path):
    pixels = np.full((8, 8, 4), 255, np.uint8)
    pixels[:, :4, 3] = 0
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    out = decoded(path)
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] == 255).all()


def test_palette_decoded_to_colours(tmp_path):
    image = Image.new("P", (4, 2))
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.putdata([0, 1, 1, 0, 1, 0, 0, 1])
    path = tmp_path / "palette.png"
    image.save(path)
    out = decoded(path)
    assert tuple(out[0, 1]) == (10, 200, 30)
    assert tuple(out[0, 0]) == (0, 0, 0)


def test_palette_transparency_becomes_black(tmp_path):
    image = Image.new("P", (4, 1))
    image.putpalette([250, 250, 250, 10, 200, 30] + [0] * 762)
    image.putdata([0, 1, 0, 1])
    path = tmp_path / "palette-transparent.png"
    image.save(path, transparency=0)
    out = decoded(path)
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (10, 200, 30)


@pytest.mark.parametrize("format_name, suffix", [("JPEG", ".jpg"), ("TIFF", ".tif")])
def test_cmyk_converted_to_rgb(tmp_path, format_name, suffix):
    # Pure cyan ink: no red, full green and blue.
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))
    path = tmp_path / f"cmyk{suffix}"
    cyan.save(path, format_name)
    out = decoded(path)
    assert out[8, 8, 0] <= 5
    assert out[8, 8, 1] >= 250
    assert out[8, 8, 2] >= 250


def test_one_bit_maps_to_black_and_white(tmp_path):
    pixels = np.zeros((8, 8), bool)
    pixels[:, 4:] = True
    path = tmp_path / "bits.png"
    Image.fromarray(pixels).save(path)
    out = decoded(path)
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] == 255).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path, orientation):
    stored = blocks()
    path = save_jpeg(tmp_path / f"o{orientation}.jpg", stored, orientation)
    expected = DISPLAYED[orientation](stored).astype(int)
    out = decoded(path)[..., 0].astype(int)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 4


def test_exif_orientation_after_draft(tmp_path):
    stored = blocks(2880, 2304, block=576)
    path = save_jpeg(tmp_path / "film.jpg", stored, orientation=6)
    out = decoded(path, (128, 128))[..., 0].astype(int)
    # Draft decodes at 1/8 (288x360 stored), then the tag rotates it to 360x288.
    assert out.shape == (288, 360)
    expected = DISPLAYED[6](stored[::8, ::8]).astype(int)
    assert np.abs(out - expected).max() <= 4


def test_draft_reduces_large_jpeg(tmp_path):
    path = save_jpeg(tmp_path / "film.jpg", blocks(2880, 2304, block=576))
    image = decode_image(path, (128, 128))
    assert image.size == (288, 360)


def test_draft_keeps_detail_for_large_target(tmp_path):
    path = save_jpeg(tmp_path / "film.jpg", blocks(2880, 2304, block=576))
    # 2 x 600 = 1200 is requested along both axes, and a 1/2 scale would give
    # only 1152 columns, so the film is decoded at full scale.
    image = decode_image(path, (600, 600))
    assert image.size == (2304, 2880)


def test_no_size_decodes_full_scale(tmp_path):
    path = save_jpeg(tmp_path / "film.jpg", blocks(2880, 2304, block=576))
    assert decode_image(path).size == (2304, 2880)


def test_load_pixels_shape_and_type(tmp_path):
    path = save_jpeg(tmp_path / "film.jpg", blocks(2880, 2304, block=576))
    pixels = load_pixels(path, (96, 64))
    assert pixels.shape == (64, 96, 3)
    assert pixels.dtype == np.uint8


def test_load_input_scaling(tmp_path):
    path = tmp_path / "white.png"
    Image.new("L", (10, 10), 255).save(path)
    config = PreprocessConfig(height=4, width=4, scaling=ValueScaling.SYMMETRIC)
    model_input = load_input(path, config)
    assert model_input.shape == (4, 4, 3)
    assert model_input.dtype == np.float32
    assert np.allclose(model_input, 1.0)


def truncated_jpeg(tmp_path):
    path = save_jpeg(tmp_path / "whole.jpg", np.random.default_rng(0).integers(0, 256, (256, 256), np.uint8))
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_truncated_jpeg_rejected(tmp_path):
    with pytest.raises(TruncatedImageError, match="truncated"):
        decode_image(truncated_jpeg(tmp_path))


def test_truncated_jpeg_allowed_with_warning(tmp_path, caplog):
    image = decode_image(truncated_jpeg(tmp_path), allow_truncated=True)
    assert image.size == (256, 256)
    assert "truncated" in caplog.text


def test_truncated_rejected_despite_global_switch(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(TruncatedImageError):
        decode_image(truncated_jpeg(tmp_path))


def test_truncated_switch_restored(tmp_path):
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    decode_image(truncated_jpeg(tmp_path), allow_truncated=True)
    assert ImageFile.LOAD_TRUNCATED_IMAGES == before


def test_header_over_limit_rejected(tmp_path):
    path = save_jpeg(tmp_path / "big.jpg", blocks(400, 300, block=100))
    with pytest.raises(ImageTooLargeError, match="300x400"):
        decode_image(path, max_pixels=100_000)


def test_limit_checked_before_decoding(tmp_path, monkeypatch):
    path = save_jpeg(tmp_path / "big.jpg", blocks(400, 300, block=100))

    def fail_load(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_load)
    with pytest.raises(ImageTooLargeError):
        decode_image(path, max_pixels=100_000)


def test_display_path_escapes_bytes():
    name = images.os.fsdecode(b"/data/scan\xff\n.jpg")
    shown = display_path(name)
    assert shown == "/data/scan\\udcff\\x0a.jpg"


def test_display_path_keeps_unicode():
    assert display_path("/data/röntgen.jpg") == "/data/röntgen.jpg"


def test_mpo_uses_primary_image(tmp_path):
    first = Image.fromarray(blocks())
    second = Image.new("L", (48, 32), 0)
    path = tmp_path / "phone.jpg"
    first.save(path, "MPO", save_all=True, append_images=[second], quality=95)
    with Image.open(path) as opened:
        assert opened.format == "MPO"
    out = decoded(path)[..., 0].astype(int)
    assert np.abs(out - blocks()).max() <= 4


def test_format_outside_list_rejected(tmp_path):
    # PPM is a format Pillow reads, but not one edgefrac accepts.
    path = tmp_path / "netpbm.jpg"
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PPM")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnreadableImageError, match="not a recognised image format"):
        decode_image(path)


@pytest.mark.slow
def test_fracatlas_matches_manifest(fracatlas_dir):
    """Every real image decodes or raises TruncatedImageError, as manifest.csv's decodes_fully column records."""
    import csv

    with open(fracatlas_dir / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3469

    mismatched_truncation = []
    wrong_orientation = []
    lenient_failed = []
    for row in rows:
        path = fracatlas_dir / "images" / row["label"] / row["image_id"]
        try:
            image = decode_image(path, (224, 224))
        except TruncatedImageError:
            if row["decodes_fully"] != "0":
                mismatched_truncation.append(row["image_id"])
            if decode_image(path, (224, 224), allow_truncated=True).mode != "RGB":
                lenient_failed.append(row["image_id"])
            continue
        if row["decodes_fully"] != "1":
            mismatched_truncation.append(row["image_id"])
        stored_ratio = int(row["width"]) / int(row["height"])
        # Tags 5 to 8 swap width and height; draft mode keeps the aspect ratio within rounding.
        expected_ratio = 1 / stored_ratio if row["exif_orientation"] in {"5", "6", "7", "8"} else stored_ratio
        if abs(image.size[0] / image.size[1] - expected_ratio) > 0.02:
            wrong_orientation.append(row["image_id"])

    assert mismatched_truncation == []
    assert wrong_orientation == []
    assert lenient_failed == []


@pytest.mark.slow
def test_fracatlas_rotated_tags_present(fracatlas_dir):
    """The real data set contains files tagged 6 and 8, so the orientation check above is not vacuous."""
    import csv

    with open(fracatlas_dir / "manifest.csv", newline="", encoding="utf-8") as handle:
        tags = {row["exif_orientation"] for row in csv.DictReader(handle)}
    assert {"6", "8"} <= tags
