"""The real ``edgefrac infer`` script over one folder with the whole hostile-input corpus and real radiographs.

The folder gets every raster and DICOM case of ``corpus``, a file with mode
000, the eight EXIF orientations, a file inside the directory named
``folder.jpg``, a directory link loop and a text file. Real FracAtlas
radiographs, some of them truncated, are linked in when the data set is
present. The run must finish with exit code 3 and write exactly one row for
each file the folder walk lists.

The expected file list is computed here with ``os.scandir``, not with the
walker under test. An entry is listed when its suffix is an image or DICOM
suffix and it is not a directory. So a symbolic link to a file, a broken link
and a link loop each count as one file, and a FIFO counts too. A directory is
searched and never listed, even when it is named like an image, and a link to
a directory is neither listed nor followed.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import CASES, DICOM_CASES, SCORED, build_exif_orientations, build_unreadable, jpeg_bytes
from edgefrac.batch import utf8_path
from edgefrac.exitcodes import ExitCode

EDGEFRAC_SCRIPT = Path(sys.executable).parent / "edgefrac"
LISTED_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom", ".dic"}
REAL_IMAGES_PER_CLASS = 9
TRUNCATED_REAL_IMAGES = 2
PRIVATE_MARKER = "ZZPRIVATEMARKER"
TRUNCATED_CASES = {"truncated jpeg", "truncated png"}

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The corpus folder, the expected status of each file (keyed by path bytes) and the truncated files."""

    folder: Path
    expected: dict[bytes, str]
    truncated: frozenset[bytes]
    real: frozenset[bytes]


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished ``edgefrac infer`` process and the files it wrote."""

    completed: subprocess.CompletedProcess
    csv_path: Path
    audit_path: Path

    def rows(self) -> list[dict]:
        return read_rows(self.csv_path)


def listed_files(folder: Path) -> set[bytes]:
    """List the files a folder run must score, by the rule in the module docstring."""
    found = set()
    with os.scandir(os.fsencode(folder)) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found |= listed_files(Path(os.fsdecode(entry.path)))
                continue
            try:
                is_directory_link = entry.is_dir()
            except OSError:
                is_directory_link = False
            suffix = os.path.splitext(entry.name)[1].lower()
            if not is_directory_link and os.fsdecode(suffix) in LISTED_SUFFIXES:
                found.add(entry.path)
    return found


def pick_real_images(fracatlas: Path) -> tuple[list[Path], set[str]]:
    """Pick evenly spaced whole images of each class and the first truncated ones.

    Returns the picked paths and the names of the truncated ones.
    """
    with open(fracatlas / "manifest.csv", newline="", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    picked = []
    for class_name in ("Fractured", "Non_fractured"):
        whole = sorted(
            row["image_id"] for row in manifest if row["label"] == class_name and row["decodes_fully"] == "1"
        )
        step = max(1, len(whole) // REAL_IMAGES_PER_CLASS)
        picked += [fracatlas / "images" / class_name / name for name in whole[::step][:REAL_IMAGES_PER_CLASS]]
    truncated = sorted((row["label"], row["image_id"]) for row in manifest if row["decodes_fully"] == "0")
    picked += [fracatlas / "images" / label / name for label, name in truncated[:TRUNCATED_REAL_IMAGES]]
    return picked, {name for _, name in truncated[:TRUNCATED_REAL_IMAGES]}


def add_real_images(folder: Path, fracatlas: Path) -> tuple[dict[bytes, str], set[bytes]]:
    """Link the picked radiographs into ``folder/fracatlas/<class>/``.

    Returns the expected status of each link and the set of truncated ones.
    """
    images, truncated_names = pick_real_images(fracatlas)
    expected = {}
    truncated = set()
    for source in images:
        link = folder / "fracatlas" / source.parent.name / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve())
        is_truncated = source.name in truncated_names
        expected[os.fsencode(link)] = "error" if is_truncated else "ok"
        if is_truncated:
            truncated.add(os.fsencode(link))
    return expected, truncated


def build_corpus(folder: Path, fracatlas: Path | None) -> Corpus:
    expected: dict[bytes, str] = {}
    truncated: set[bytes] = set()
    for name, build, outcome, _ in CASES:
        path = build(folder)
        expected[os.fsencode(path)] = "ok" if outcome is SCORED else "error"
        if name in TRUNCATED_CASES:
            truncated.add(os.fsencode(path))
    inner = folder / "folder.jpg" / "inside.jpg"
    inner.write_bytes(jpeg_bytes())
    expected[os.fsencode(inner)] = "ok"
    del expected[os.fsencode(folder / "folder.jpg")]

    locked = build_unreadable(folder)
    # Root reads a file despite mode 000, so the outcome depends on who runs the test.
    expected[os.fsencode(locked)] = "ok" if os.access(locked, os.R_OK) else "error"
    for path in build_exif_orientations(folder):
        expected[os.fsencode(path)] = "ok"

    dicom_folder = folder / "dicom"
    dicom_folder.mkdir()
    for _, build, outcome, _ in DICOM_CASES:
        expected[os.fsencode(build(dicom_folder))] = "ok" if outcome is SCORED else "error"

    (folder / "sub").mkdir()
    (folder / "sub" / "up.jpg").symlink_to("..")  # a directory link loop named like an image
    (folder / "notes.txt").write_text("not an image")

    real: dict[bytes, str] = {}
    if fracatlas is not None:
        real, real_truncated = add_real_images(folder, fracatlas)
        expected.update(real)
        truncated |= real_truncated
    return Corpus(folder, expected, frozenset(truncated), frozenset(real))


def read_rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def run_infer(folder: Path, model: Path, csv_path: Path, audit_path: Path, *extra: str, debug: bool = False) -> Run:
    """Run ``edgefrac infer`` on ``folder``. With ``debug``, ``-vv`` sends debug log records to stderr too."""
    command = [
        str(EDGEFRAC_SCRIPT), *(["-vv"] if debug else []), "infer", str(folder), "--csv", str(csv_path), "--json",
        "--audit-log", str(audit_path), "--model", str(model), *extra,
    ]
    completed = subprocess.run(command, capture_output=True, timeout=120)
    return Run(completed, csv_path, audit_path)


def statuses(rows: list[dict]) -> dict[bytes, str]:
    return {os.fsencode(row["path"]): row["status"] for row in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request) -> Corpus:
    pytest.importorskip("pydicom")
    try:
        fracatlas = request.getfixturevalue("fracatlas_dir")
    except pytest.skip.Exception:
        fracatlas = None
    return build_corpus(tmp_path_factory.mktemp("corpus"), fracatlas)


@pytest.fixture(scope="module")
def first_run(corpus, tiny_int8_model, tmp_path_factory) -> Run:
    output = tmp_path_factory.mktemp("first-run")
    return run_infer(corpus.folder, tiny_int8_model, output / "out.csv", output / "audit.jsonl")


def test_walk_lists_expected_files(corpus):
    assert listed_files(corpus.folder) == set(corpus.expected)


def test_corpus_exits_3(first_run):
    assert first_run.completed.returncode == ExitCode.SOME_INPUTS_FAILED, first_run.completed.stderr.decode()


def test_corpus_no_traceback(first_run):
    assert b"Traceback" not in first_run.completed.stderr


def test_corpus_one_row_per_file(corpus, first_run):
    paths = [os.fsencode(row["path"]) for row in first_run.rows()]
    assert len(paths) == len(set(paths))
    assert set(paths) == listed_files(corpus.folder)


def test_corpus_json_one_entry_per_file(corpus, first_run):
    document = json.loads(first_run.completed.stdout)
    assert len(document["results"]) == len(corpus.expected)
    assert document["summary"]["failed"] == list(corpus.expected.values()).count("error")


def test_corpus_statuses_as_expected(corpus, first_run):
    assert statuses(first_run.rows()) == corpus.expected


def test_corpus_error_reasons_one_line(first_run):
    for row in first_run.rows():
        if row["status"] == "error":
            reason = row["error"]
            assert reason.strip(), row["path"]
            assert "\n" not in reason, row["path"]
            assert "unexpected decoder error" not in reason, row["path"]


def test_corpus_no_patient_marker(first_run):
    outputs = {
        "stdout": first_run.completed.stdout,
        "stderr": first_run.completed.stderr,
        "csv": first_run.csv_path.read_bytes(),
        "audit log": first_run.audit_path.read_bytes(),
    }
    for name, data in outputs.items():
        assert PRIVATE_MARKER.encode() not in data, name


def test_corpus_audit_line_per_file(corpus, first_run):
    lines = first_run.audit_path.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == len(corpus.expected)
    assert sorted(entry["result"]["status"] for entry in entries) == sorted(corpus.expected.values())


def test_corpus_includes_real_radiographs(corpus, fracatlas_dir):
    real_statuses = [corpus.expected[path] for path in corpus.real]
    assert real_statuses.count("ok") == 2 * REAL_IMAGES_PER_CLASS
    assert real_statuses.count("error") == TRUNCATED_REAL_IMAGES


def test_resume_retries_only_errors(corpus, first_run, tiny_int8_model, tmp_path):
    csv_path = tmp_path / "out.csv"
    shutil.copyfile(first_run.csv_path, csv_path)
    first_rows = first_run.rows()
    error_paths = {row["path"] for row in first_rows if row["status"] == "error"}
    ok_rows = [row for row in first_rows if row["status"] == "ok"]

    second = run_infer(corpus.folder, tiny_int8_model, csv_path, tmp_path / "audit.jsonl", debug=True)
    assert second.completed.returncode == ExitCode.SOME_INPUTS_FAILED, second.completed.stderr.decode()
    assert b"Traceback" not in second.completed.stderr
    assert PRIVATE_MARKER.encode() not in second.completed.stderr

    document = json.loads(second.completed.stdout)
    assert {entry["path"] for entry in document["results"]} == {utf8_path(path) for path in error_paths}
    assert document["summary"]["skipped"] == len(ok_rows)

    rows = second.rows()
    paths = [os.fsencode(row["path"]) for row in rows]
    assert len(paths) == len(set(paths))
    assert set(paths) == set(corpus.expected)
    assert rows[: len(ok_rows)] == ok_rows


def test_allow_truncated_scores_cut_files(corpus, tiny_int8_model, tmp_path):
    run = run_infer(corpus.folder, tiny_int8_model, tmp_path / "out.csv", tmp_path / "audit.jsonl", "--allow-truncated")
    assert run.completed.returncode == ExitCode.SOME_INPUTS_FAILED, run.completed.stderr.decode()
    scored = statuses(run.rows())
    for path in corpus.truncated:
        assert scored[path] == "truncated", path
