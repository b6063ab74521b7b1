"""Hostile and damaged inputs: each one is scored or raises one InputError line naming the file.

Every file is built here. The same builders fill one folder for the folder-walk
test, which checks that listing and decoding get through all of them.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefrac import images
from edgefrac.dataset import image_files
from edgefrac.errors import (
    ImageTooLargeError,
    InputError,
    TruncatedImageError,
    UnreadableImageError,
    UnsupportedImageError,
)
from edgefrac.images import display_path, load_pixels

SIZE = (32, 32)
SCORED = "scored"


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


def outcome_of(path: Path):
    """Return the decoded pixels, or the InputError raised; any other exception propagates."""
    try:
        return load_pixels(path, SIZE)
    except InputError as error:
        return error


@pytest.mark.parametrize("name, build, expected, fragment", CASES, ids=[case[0] for case in CASES])
def test_bad_input_outcome(tmp_path, name, build, expected, fragment):
    path = build(tmp_path)
    outcome = outcome_of(path)
    if expected is SCORED:
        assert isinstance(outcome, np.ndarray), outcome
        assert outcome.shape == (32, 32, 3)
        return
    assert type(outcome) is expected
    message = str(outcome)
    assert "\n" not in message
    assert message.startswith(display_path(path) + ": ")
    message.encode("utf-8")  # printable on a UTF-8 terminal: no lone surrogates
    if fragment is not None:
        assert fragment in message


def test_non_utf8_message_escaped(tmp_path):
    outcome = outcome_of(build_non_utf8_name_corrupt(tmp_path))
    assert "bad\\udcff\\udcfe.png" in str(outcome)


def test_truncated_png_allowed(tmp_path):
    pixels = load_pixels(build_truncated_png(tmp_path), SIZE, allow_truncated=True)
    assert pixels.shape == (32, 32, 3)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files despite chmod 000")
def test_unreadable_file_rejected(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes())
    path.chmod(0)
    try:
        with pytest.raises(UnreadableImageError, match="permission denied"):
            load_pixels(path, SIZE)
    finally:
        path.chmod(0o644)


def test_permission_error_mapped(tmp_path, monkeypatch):
    # Runs as root too: open() is made to fail the way it does for an
    # unprivileged user on a chmod 000 file.
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes())

    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(images, "open", deny, raising=False)
    with pytest.raises(UnreadableImageError, match="permission denied"):
        load_pixels(path, SIZE)


def test_other_os_error_mapped(tmp_path, monkeypatch):
    path = tmp_path / "scan.jpg"
    path.write_bytes(jpeg_bytes())

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(images, "open", fail, raising=False)
    with pytest.raises(UnreadableImageError, match="Input/output error"):
        load_pixels(path, SIZE)


def test_missing_file_rejected(tmp_path):
    with pytest.raises(UnreadableImageError, match="file not found"):
        load_pixels(tmp_path / "absent.jpg", SIZE)


def test_folder_walk_lists_bad_entries(tmp_path):
    for _, build, _, _ in CASES:
        build(tmp_path)
    inner = tmp_path / "folder.jpg" / "inside.jpg"
    inner.write_bytes(jpeg_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")  # a directory link loop
    (tmp_path / "notes.txt").write_text("not an image")

    found = image_files(tmp_path)
    names = {os.fsencode(path.relative_to(tmp_path)) for path in found}
    assert b"folder.jpg/inside.jpg" in names
    assert b"folder.jpg" not in names
    assert b"loop.jpg" in names
    assert b"r\xf6ntgen.jpg" in names
    assert b"notes.txt" not in names
    assert not any(name.startswith(b"sub/") for name in names)
    assert len(found) == len(CASES)  # the directory case is replaced by its inner file


def test_folder_walk_every_entry_defined(tmp_path):
    for _, build, _, _ in CASES:
        build(tmp_path)
    outcomes = [outcome_of(path) for path in image_files(tmp_path)]
    scored = [o for o in outcomes if isinstance(o, np.ndarray)]
    failed = [o for o in outcomes if isinstance(o, InputError)]
    assert len(scored) + len(failed) == len(outcomes)
    assert len(scored) == sum(1 for case in CASES if case[2] is SCORED)


def test_folder_walk_skips_unlistable(tmp_path, caplog, monkeypatch):
    (tmp_path / "scan.jpg").write_bytes(jpeg_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = image_files(tmp_path)
    assert found == [tmp_path / "scan.jpg"]
    assert "skipping folder" in caplog.text
