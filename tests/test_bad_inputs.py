"""Hostile and damaged inputs: each one is scored or raises one InputError line naming the file.

The files come from the builders in ``corpus``. The same builders fill one
folder for the folder-walk test, which checks that listing and decoding get
through all of them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from corpus import (
    CASES,
    SCORED,
    build_non_utf8_name_corrupt,
    build_truncated_png,
    jpeg_bytes,
)
from edgefrac import images
from edgefrac.dataset import image_files
from edgefrac.errors import InputError, UnreadableImageError
from edgefrac.images import display_path, load_pixels

SIZE = (32, 32)


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
