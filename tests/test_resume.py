"""Interrupted and failing folder runs of the real ``edgefrac`` script, and a run over real radiographs."""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgefrac.exitcodes import ExitCode
from edgefrac.results import read_complete_rows

EDGEFRAC_SCRIPT = Path(sys.executable).parent / "edgefrac"
FOLDER_SIZE = 40
REAL_IMAGES_PER_CLASS = 110
TRUNCATED_INCLUDED = 8


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory) -> Path:
    """Forty 1200x1000 PNG images, large enough that each one takes a noticeable time to decode."""
    folder = tmp_path_factory.mktemp("forty")
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 200, 1200, dtype=np.float32)[np.newaxis, :]
    for index in range(FOLDER_SIZE):
        noise = rng.integers(0, 40, (1000, 1200), dtype=np.uint8)
        pixels = (ramp + noise).clip(0, 255).astype(np.uint8)
        subfolder = folder / f"part{index % 3}"
        subfolder.mkdir(exist_ok=True)
        Image.fromarray(pixels, mode="L").save(subfolder / f"film{index:02d}.png")
    return folder


def expected_paths(folder: Path) -> set[str]:
    return {str(path) for path in folder.rglob("*.png")}


def infer_command(folder: Path, model: Path, csv_path: Path) -> list[str]:
    return [str(EDGEFRAC_SCRIPT), "infer", str(folder), "--model", str(model), "--csv", str(csv_path), "--threads", "1"]


def complete_rows(csv_path: Path) -> tuple[list[list[str]], bool]:
    """Return the complete rows of ``csv_path`` and whether the file ends exactly after them."""
    data = csv_path.read_bytes()
    rows, length = read_complete_rows(data)
    return rows, length == len(data)


def run_until_rows(command: list[str], csv_path: Path, rows: int) -> None:
    """Start ``command`` and SIGKILL it once ``csv_path`` has at least ``rows`` data rows."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None:
            if csv_path.exists() and csv_path.read_bytes().count(b"\n") - 1 >= rows:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        process.wait(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_resume_after_kill(tiny_int8_model, large_folder, tmp_path, seed):
    rng = random.Random(seed)
    csv_path = tmp_path / "out.csv"
    command = infer_command(large_folder, tiny_int8_model, csv_path)
    expected = expected_paths(large_folder)

    done = 0
    for _ in range(3):
        kill_at = rng.randint(done + 1, FOLDER_SIZE - 2)
        run_until_rows(command, csv_path, kill_at)
        rows, _ = complete_rows(csv_path)
        paths = [row[0] for row in rows]
        assert len(paths) == len(set(paths))
        assert set(paths) <= expected
        done = len(paths)
        if done >= FOLDER_SIZE - 2:
            break

    # A power cut can leave half a row, which kill -9 of a single write cannot: add one by hand.
    with open(csv_path, "ab") as handle:
        handle.write(f"{sorted(expected)[-1]},ok,0.12".encode())

    final = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert final.returncode == ExitCode.OK, final.stderr
    rows, ends_cleanly = complete_rows(csv_path)
    assert ends_cleanly
    paths = [row[0] for row in rows]
    assert len(paths) == FOLDER_SIZE
    assert set(paths) == expected
    assert {row[1] for row in rows} == {"ok"}


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1200, 1200))


@pytest.mark.slow
def test_full_disk_keeps_rows(tiny_int8_model, large_folder, tmp_path):
    csv_path = tmp_path / "out.csv"
    command = infer_command(large_folder, tiny_int8_model, csv_path)
    limited = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert limited.returncode == ExitCode.RUNTIME_FAILURE, limited.stderr
    assert "Traceback" not in limited.stderr
    error_lines = [line for line in limited.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1
    assert "file size limit reached" in error_lines[0]
    assert "kept" in error_lines[0]

    rows, ends_cleanly = complete_rows(csv_path)
    assert ends_cleanly
    assert 1 <= len(rows) < FOLDER_SIZE

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert f"skipped {len(rows)}" in resumed.stderr
    rows, _ = complete_rows(csv_path)
    assert sorted(row[0] for row in rows) == sorted(expected_paths(large_folder))


def pick_real_images(fracatlas: Path) -> tuple[list[Path], set[str]]:
    """Pick every n-th file of each class folder, plus some truncated ones; return them and the truncated ids."""
    with open(fracatlas / "manifest.csv", newline="", encoding="utf-8") as handle:
        truncated_ids = {row["image_id"] for row in csv.DictReader(handle) if row["decodes_fully"] == "0"}
    picked: list[Path] = []
    for class_name in ("Fractured", "Non_fractured"):
        files = sorted((fracatlas / "images" / class_name).glob("*.jpg"))
        step = max(1, len(files) // REAL_IMAGES_PER_CLASS)
        picked.extend(files[::step][:REAL_IMAGES_PER_CLASS])
    picked_names = {path.name for path in picked}
    for image_id in sorted(truncated_ids)[:TRUNCATED_INCLUDED]:
        if image_id not in picked_names:
            picked.extend((fracatlas / "images").glob(f"*/{image_id}"))
    included_truncated = {path.name for path in picked} & truncated_ids
    return picked, included_truncated


@pytest.mark.slow
def test_infer_real_radiographs(tiny_int8_model, fracatlas_dir, tmp_path):
    images, truncated = pick_real_images(fracatlas_dir)
    assert len(images) >= 200
    assert len(truncated) >= TRUNCATED_INCLUDED
    csv_path = tmp_path / "real.csv"
    completed = subprocess.run(
        [str(EDGEFRAC_SCRIPT), "infer", *map(str, images), "--model", str(tiny_int8_model),
         "--csv", str(csv_path), "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == ExitCode.SOME_INPUTS_FAILED, completed.stderr
    assert "Traceback" not in completed.stderr

    results = json.loads(completed.stdout)["results"]
    assert len(results) == len(images)
    assert {entry["path"] for entry in results} == {str(path) for path in images}
    assert {Path(entry["path"]).parent.name for entry in results} == {"Fractured", "Non_fractured"}
    errors = {Path(entry["path"]).name: entry["error"] for entry in results if entry["status"] == "error"}
    assert set(errors) == truncated
    for reason in errors.values():
        assert "truncated" in reason

    rows, ends_cleanly = complete_rows(csv_path)
    assert ends_cleanly
    assert len(rows) == len(images)
    assert os.path.commonpath([row[0] for row in rows]) == str(fracatlas_dir / "images")


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler; the child must see SIGINT as an interactive run does.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def start_and_read_first_row(command: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """Start ``command`` with stdout on a pipe and return once the table header and first row arrive."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    lines = [process.stdout.readline(), process.stdout.readline()]
    return process, lines


@pytest.mark.slow
def test_rows_printed_while_scoring(tiny_int8_model, large_folder, tmp_path):
    csv_path = tmp_path / "out.csv"
    process, lines = start_and_read_first_row(infer_command(large_folder, tiny_int8_model, csv_path))
    process.kill()
    process.communicate(timeout=300)
    assert lines[0].split() == ["file", "probability", "label"]
    assert lines[1].split()[0] in expected_paths(large_folder)
    rows, _ = complete_rows(csv_path)
    assert len(rows) < FOLDER_SIZE


@pytest.mark.slow
def test_interrupt_exits_130(tiny_int8_model, large_folder, tmp_path):
    # Ten links to each film make the run long enough that SIGINT lands mid-run on a busy machine.
    many = tmp_path / "many"
    many.mkdir()
    films = sorted(large_folder.rglob("*.png"))
    for copy in range(10):
        for film in films:
            (many / f"{copy}-{film.name}").symlink_to(film)
    csv_path = tmp_path / "out.csv"
    process, lines = start_and_read_first_row(infer_command(many, tiny_int8_model, csv_path))
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert "Aborted!" not in stderr
    rows, ends_cleanly = complete_rows(csv_path)
    assert ends_cleanly
    assert 1 <= len(rows) < 10 * FOLDER_SIZE
    message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"interrupted: scored {len(rows)} file(s), 0 failed")
    assert f"run the same command again to resume, and files in {csv_path} are skipped" in message
    printed = [line.split()[0] for line in [lines[1], *stdout.splitlines()]]
    assert set(printed) <= {row[0] for row in rows}
