"""Expanding infer targets: files, folders, glob patterns, odd folder entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import command_without_folder_access
from edgefrac.errors import UsageError
from edgefrac.targets import UnlistableFolder, expand_targets, is_pattern, walk_folder


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_recursive_sorted(tmp_path):
    _touch(tmp_path / "b.jpg")
    _touch(tmp_path / "a.PNG")
    _touch(tmp_path / "sub" / "deep" / "c.dcm")
    _touch(tmp_path / "notes.txt")
    found = [path.relative_to(tmp_path).as_posix() for path in expand_targets([str(tmp_path)])]
    assert found == ["a.PNG", "b.jpg", "sub/deep/c.dcm"]


def test_explicit_file_any_suffix(tmp_path):
    path = _touch(tmp_path / "scan.raw")
    assert expand_targets([str(path)]) == [path]


def test_quoted_glob_expanded(tmp_path, monkeypatch):
    _touch(tmp_path / "x" / "one.jpg")
    _touch(tmp_path / "x" / "y" / "two.jpg")
    _touch(tmp_path / "x" / "y" / "three.txt")
    monkeypatch.chdir(tmp_path)
    found = [path.as_posix() for path in expand_targets(["x/**/*.*"])]
    assert found == ["x/one.jpg", "x/y/two.jpg"]


def test_glob_matching_folder_walks_it(tmp_path, monkeypatch):
    _touch(tmp_path / "day1" / "a.jpg")
    _touch(tmp_path / "day2" / "b.jpg")
    monkeypatch.chdir(tmp_path)
    assert [path.as_posix() for path in expand_targets(["day*"])] == ["day1/a.jpg", "day2/b.jpg"]


def test_duplicates_kept_once(tmp_path, monkeypatch):
    path = _touch(tmp_path / "a.jpg")
    monkeypatch.chdir(tmp_path)
    assert expand_targets(["a.jpg", str(path), "."]) == [Path("a.jpg")]


def test_missing_target_rejected(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        expand_targets([str(tmp_path / "absent.jpg")])


def test_unmatched_pattern_rejected(tmp_path):
    with pytest.raises(UsageError, match="matches no files"):
        expand_targets([str(tmp_path / "*.jpg")])


def test_empty_folder_gives_no_files(tmp_path, caplog):
    _touch(tmp_path / "notes.txt")
    assert expand_targets([str(tmp_path)]) == []
    assert "contains no image or DICOM files" in caplog.text


def test_pattern_only_other_files_rejected(tmp_path):
    _touch(tmp_path / "notes.txt")
    with pytest.raises(UsageError, match="no image or DICOM files"):
        expand_targets([str(tmp_path / "*.txt")])


def test_folder_named_like_image_walked(tmp_path):
    inner = _touch(tmp_path / "study.jpg" / "view.png")
    assert list(walk_folder(tmp_path)) == [inner]


def test_symlink_loop_yielded_not_followed(tmp_path):
    os.symlink("loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink("loop_a.jpg", tmp_path / "loop_b.jpg")
    os.symlink(".", tmp_path / "self")
    names = [path.name for path in walk_folder(tmp_path)]
    assert names == ["loop_a.jpg", "loop_b.jpg"]


def test_non_utf8_name_listed(tmp_path):
    name = os.fsdecode(b"r\xf6ntgen.jpg")
    _touch(tmp_path / name)
    assert [path.name for path in walk_folder(tmp_path)] == [name]


def test_pattern_detection():
    assert is_pattern("scans/*.jpg")
    assert is_pattern("scan?.png")
    assert not is_pattern("scans/a.jpg")


def _write_dicom_marker(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    return path


def test_suffixless_dicom_found(tmp_path):
    image = _write_dicom_marker(tmp_path / "DICOM" / "ST0" / "SE0" / "IM0")
    uid_named = _write_dicom_marker(tmp_path / "DICOM" / "1.2.840.10008.5")
    _touch(tmp_path / "DICOM" / "README")
    _touch(tmp_path / "DICOMDIR.bak")
    assert list(walk_folder(tmp_path)) == [uid_named, image]


def test_fifo_not_opened(tmp_path):
    os.mkfifo(tmp_path / "IM0")
    image = _write_dicom_marker(tmp_path / "IM1")
    assert list(walk_folder(tmp_path)) == [image]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_unreadable_file_left_out(tmp_path):
    hidden = _write_dicom_marker(tmp_path / "IM0")
    hidden.chmod(0)
    image = _write_dicom_marker(tmp_path / "IM1")
    try:
        assert list(walk_folder(tmp_path)) == [image]
    finally:
        hidden.chmod(0o644)


def test_file_in_locked_folder_kept(tmp_path, monkeypatch):
    # Root may enter any folder, so the PermissionError a user without access gets is raised here instead.
    locked = tmp_path / "locked"
    locked.mkdir()
    image = locked / "scan.jpg"
    image.write_bytes(b"x")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if os.fspath(path).startswith(os.fspath(locked) + os.sep):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert expand_targets([str(image)]) == [image]
    with pytest.raises(UsageError, match="matches no files"):
        expand_targets([str(locked / "*.png")])


def _scan_tree(root: Path, locked_name: str) -> Path:
    """Write scans/a/1.jpg, scans/b/deep/3.jpg and a 2.jpg in scans/``locked_name``, set to mode 000."""
    _touch(root / "scans" / "a" / "1.jpg")
    _touch(root / "scans" / "b" / "deep" / "3.jpg")
    locked = root / "scans" / locked_name
    _touch(locked / "2.jpg")
    locked.chmod(0)
    return locked


def _expand_in_child(prefix: list[str], pattern: str, cwd: Path) -> dict:
    """Run expand_targets on ``pattern`` in a child process started with ``prefix``; return files and folders."""
    code = (
        "import json, sys\n"
        "from edgefrac.targets import expand_targets\n"
        "unlistable = []\n"
        "files = expand_targets([sys.argv[1]], unlistable)\n"
        "print(json.dumps({'files': [str(path) for path in files], "
        "'unlistable': [[str(folder.path), folder.reason] for folder in unlistable]}))\n"
    )
    completed = subprocess.run(
        [*prefix, sys.executable, "-c", code, pattern], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder regardless of its mode")
def test_glob_reports_unlistable_subfolder(tmp_path, monkeypatch, caplog):
    locked = _scan_tree(tmp_path, "locked")
    monkeypatch.chdir(tmp_path)
    unlistable: list[UnlistableFolder] = []
    try:
        found = [path.as_posix() for path in expand_targets(["scans/**/*.jpg"], unlistable)]
    finally:
        locked.chmod(0o755)
    assert found == ["scans/a/1.jpg", "scans/b/deep/3.jpg"]
    assert unlistable == [UnlistableFolder(Path("scans/locked"), "Permission denied")]
    assert "cannot list folder scans/locked (Permission denied)" in caplog.text


def test_glob_unlistable_subfolder_real_mode(tmp_path):
    # Runs as root too: the child process lacks the capabilities that let root list a mode 000 folder.
    locked = _scan_tree(tmp_path, "locked")
    try:
        prefix = command_without_folder_access(locked)
        recursive = _expand_in_child(prefix, "scans/**/*.jpg", tmp_path)
        one_level = _expand_in_child(prefix, "scans/*/*.jpg", tmp_path)
        only_locked = _expand_in_child(prefix, "scans/locked/*.jpg", tmp_path)
    finally:
        locked.chmod(0o755)
    assert recursive["files"] == ["scans/a/1.jpg", "scans/b/deep/3.jpg"]
    assert recursive["unlistable"] == [["scans/locked", "Permission denied"]]
    assert one_level["files"] == ["scans/a/1.jpg"]
    assert one_level["unlistable"] == [["scans/locked", "Permission denied"]]
    assert only_locked == {"files": [], "unlistable": [["scans/locked", "Permission denied"]]}


def test_glob_hidden_unlistable_folder(tmp_path):
    # glob's ** and * leave out names that start with a dot, so a locked hidden folder is not reported for them.
    locked = _scan_tree(tmp_path, ".cache")
    try:
        prefix = command_without_folder_access(locked)
        recursive = _expand_in_child(prefix, "scans/**/*.jpg", tmp_path)
        hidden = _expand_in_child(prefix, "scans/.*/*.jpg", tmp_path)
    finally:
        locked.chmod(0o755)
    assert recursive == {"files": ["scans/a/1.jpg", "scans/b/deep/3.jpg"], "unlistable": []}
    assert hidden == {"files": [], "unlistable": [["scans/.cache", "Permission denied"]]}


def test_glob_folder_link_loop_ends(tmp_path, monkeypatch):
    _touch(tmp_path / "scans" / "a" / "1.jpg")
    (tmp_path / "scans" / "a" / "up").symlink_to("..")
    monkeypatch.chdir(tmp_path)
    unlistable: list[UnlistableFolder] = []
    found = expand_targets(["scans/**/*.jpg"], unlistable)
    assert Path("scans/a/1.jpg") in found
    assert unlistable == []
