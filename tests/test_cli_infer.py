"""The infer, info and export commands: tables, JSON, CSV, exit codes, help, privacy."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import command_without_folder_access
from edgefrac import __version__
from edgefrac.cli import main
from edgefrac.dataset import file_sha256
from edgefrac.defaults import default_model_path
from edgefrac.exitcodes import ExitCode
from edgefrac.modelfile import load_model

EDGEFRAC_SCRIPT = Path(sys.executable).parent / "edgefrac"
JSON_RESULT_KEYS = {"path", "status", "probability", "label", "threshold", "error"}


def invoke(*arguments: str):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def write_bad_files(folder: Path) -> list[Path]:
    """Add three files that cannot be scored: zero bytes, HTML named .png, a truncated JPEG."""
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    html = folder / "page.png"
    html.write_text("<html><body>not an image</body></html>")
    pixels = np.random.default_rng(5).integers(0, 256, (200, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    return [empty, html, truncated]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def table_rows(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["file", "probability", "label"]
    return lines[1:]


def test_infer_single_file_table(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images / "scan0.jpg", "--model", tiny_int8_model)
    assert result.exit_code == ExitCode.OK, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 1
    assert rows[0].split()[0] == str(sample_images / "scan0.jpg")
    assert rows[0].split()[2] in ("fractured", "not_fractured")
    assert "scored 1, fractured" in result.stderr


def test_summary_states_operating_point(sample_images):
    threshold = load_model(default_model_path()).card.threshold
    result = invoke("infer", sample_images / "scan0.jpg")
    assert result.exit_code == ExitCode.OK, result.output
    summary = result.stderr.strip().splitlines()[-1]
    assert f"threshold {threshold.value:.3g}: sensitivity {threshold.sensitivity:.2f}" in summary
    assert f"specificity {threshold.specificity:.2f} on {threshold.chosen_on}" in summary
    assert "re-check" in summary
    assert "threshold" not in result.stdout


def test_summary_threshold_from_flag(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images / "scan0.jpg", "--model", tiny_int8_model, "--threshold", "0.25")
    summary = result.stderr.strip().splitlines()[-1]
    assert "threshold 0.25 (set on the command line)" in summary
    assert "sensitivity" not in summary
    assert "a fractured label means re-check the image, not a diagnosis" in summary


def test_infer_mixed_folder_exits_3(tiny_int8_model, sample_images, tmp_path):
    bad = write_bad_files(sample_images)
    csv_path = tmp_path / "out.csv"
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path)
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED, result.output
    assert "Traceback" not in result.output
    assert len(table_rows(result.stdout)) == 7
    rows = read_csv(csv_path)
    assert len(rows) == 7
    assert len({row["path"] for row in rows}) == 7
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["status"] == "error"}
    assert sorted(errors) == sorted(path.name for path in bad)
    assert "truncated" in errors["truncated.jpg"]
    for reason in errors.values():
        assert reason
        assert "\n" not in reason
    assert "scored 4, fractured" in result.stderr
    assert "failed 3, skipped 0" in result.stderr


def test_infer_json_schema(tiny_int8_model, sample_images):
    write_bad_files(sample_images)
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--json")
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED, result.output
    document = json.loads(result.stdout)
    assert document["edgefrac_version"] == __version__
    assert document["model"]["sha256"] == load_model(tiny_int8_model).sha256
    assert document["model"]["name"] == "tiny-int8"
    assert document["runtime"]
    summary = document["summary"]
    assert set(summary) == {
        "scored", "fractured", "failed", "skipped", "truncated", "threshold", "threshold_chosen_on", "preprocessing"
    }
    assert summary["preprocessing"] == "32x32 RGB bilinear 0_1 logit"
    assert summary["scored"] == 4
    assert summary["failed"] == 3
    assert summary["skipped"] == 0
    assert summary["threshold"] == 0.5
    fractured = [entry for entry in document["results"] if entry["label"] == "fractured"]
    assert summary["fractured"] == len(fractured)
    assert len(document["results"]) == 7
    for entry in document["results"]:
        assert set(entry) == JSON_RESULT_KEYS
        if entry["status"] == "ok":
            assert 0.0 <= entry["probability"] <= 1.0
            assert entry["error"] is None
        else:
            assert entry["probability"] is None
            assert entry["error"]


def test_infer_missing_target_exits_2(tiny_int8_model, tmp_path):
    result = invoke("infer", tmp_path / "absent.jpg", "--model", tiny_int8_model)
    assert result.exit_code == ExitCode.USAGE
    assert "not found" in result.stderr


def test_infer_empty_folder_exits_0(tiny_int8_model, tmp_path):
    inbox = tmp_path / "incoming"
    inbox.mkdir()
    csv_path = tmp_path / "out.csv"
    result = invoke("infer", inbox, "--model", tiny_int8_model, "--csv", csv_path)
    assert result.exit_code == ExitCode.OK, result.output
    assert "contains no image or DICOM files" in result.stderr
    assert "scored 0, fractured 0, failed 0, skipped 0" in result.stderr


def test_infer_unmatched_pattern_exits_2(tiny_int8_model, tmp_path):
    result = invoke("infer", tmp_path / "*.jpg", "--model", tiny_int8_model)
    assert result.exit_code == ExitCode.USAGE
    assert "matches no files" in result.stderr


def test_infer_no_target_exits_2():
    assert invoke("infer").exit_code == ExitCode.USAGE


def test_infer_invalid_threshold_exits_2(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--threshold", "1.5")
    assert result.exit_code == ExitCode.USAGE


def test_infer_wrong_size_override_exits_2(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--height", "64")
    assert result.exit_code == ExitCode.USAGE
    assert "--height" in result.stderr


def test_infer_corrupt_model_exits_1(tiny_int8_model, sample_images, tmp_path):
    data = bytearray(tiny_int8_model.read_bytes())
    data[len(data) - 200] ^= 0xFF
    corrupt = tmp_path / "corrupt.efm"
    corrupt.write_bytes(bytes(data))
    result = invoke("infer", sample_images, "--model", corrupt)
    assert result.exit_code == ExitCode.RUNTIME_FAILURE
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_infer_default_model_missing(monkeypatch, sample_images):
    monkeypatch.setattr("edgefrac.defaults.DEFAULT_MODEL_NAME", "absent.efm")
    result = invoke("infer", sample_images)
    assert result.exit_code == ExitCode.RUNTIME_FAILURE
    assert "--model PATH" in result.stderr


def test_infer_default_model_used(monkeypatch, tiny_int8_model, sample_images):
    monkeypatch.setattr("edgefrac.cli.infer.default_model_path", lambda: tiny_int8_model)
    result = invoke("infer", sample_images, "--json")
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)["model"]["path"] == str(tiny_int8_model)


def test_threshold_flag_sets_labels(tiny_int8_model, sample_images):
    for threshold, expected in (("0", "fractured"), ("1", "not_fractured")):
        result = invoke("infer", sample_images, "--model", tiny_int8_model, "--threshold", threshold, "--json")
        document = json.loads(result.stdout)
        assert document["summary"]["threshold"] == float(threshold)
        labels = {entry["label"] for entry in document["results"]}
        assert labels == {expected}, threshold


def test_exported_default_matches_efm(sample_images, tmp_path):
    plain = tmp_path / "default.tflite"
    exported = invoke("export", default_model_path(), plain)
    assert exported.exit_code == ExitCode.OK
    card = load_model(default_model_path()).card
    printed = exported.stderr.split("score it as the card does with: ")[1].split()
    assert printed == [
        "--scaling", card.preprocessing.scaling.value, "--resize", card.preprocessing.resize.value,
        "--output-kind", "logit", "--test-time-augmentation", "horizontal_flip",
        "--threshold", repr(card.threshold.value),
    ]
    from_efm = invoke("infer", sample_images, "--model", default_model_path(), "--json")
    from_tflite = invoke("infer", sample_images, "--model", plain, "--json", *printed)
    assert from_tflite.exit_code == ExitCode.OK, from_tflite.output
    expected = [(entry["probability"], entry["label"]) for entry in json.loads(from_efm.stdout)["results"]]
    actual = [(entry["probability"], entry["label"]) for entry in json.loads(from_tflite.stdout)["results"]]
    assert actual == expected
    for probability, _ in actual:
        assert 0.0 <= probability <= 1.0


def test_logit_read_as_probability_rows(sample_images, tmp_path):
    plain = tmp_path / "default.tflite"
    assert invoke("export", default_model_path(), plain).exit_code == ExitCode.OK
    result = invoke("infer", sample_images, "--model", plain, "--output-kind", "probability", "--json")
    results = json.loads(result.stdout)["results"]
    errors = [entry["error"] for entry in results if entry["status"] == "error"]
    assert errors, result.output
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED
    for error in errors:
        assert error.startswith("model output ")
        assert error.endswith(" is not a probability; pass --output-kind logit")


def test_csv_resume_scores_new_files(tiny_int8_model, sample_images, tmp_path):
    csv_path = tmp_path / "out.csv"
    first = invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path)
    assert first.exit_code == ExitCode.OK, first.output
    Image.fromarray(np.full((40, 40), 90, np.uint8), mode="L").save(sample_images / "new.png")
    second = invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path, "--json")
    assert second.exit_code == ExitCode.OK, second.output
    document = json.loads(second.stdout)
    assert [Path(entry["path"]).name for entry in document["results"]] == ["new.png"]
    assert document["summary"]["skipped"] == 4
    rows = read_csv(csv_path)
    assert len(rows) == 5
    assert {row["model_sha256"] for row in rows} == {load_model(tiny_int8_model).sha256}
    assert {row["edgefrac_version"] for row in rows} == {__version__}


def test_csv_resume_rescores_replaced_file(tiny_int8_model, sample_images, tmp_path):
    csv_path = tmp_path / "out.csv"
    first = invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path)
    assert first.exit_code == ExitCode.OK, first.output
    replaced = sample_images / "scan0.jpg"
    Image.fromarray(np.full((48, 48, 3), 30, np.uint8)).save(replaced)
    second = invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path, "--json")
    assert second.exit_code == ExitCode.OK, second.output
    document = json.loads(second.stdout)
    assert [entry["path"] for entry in document["results"]] == [str(replaced)]
    assert document["summary"]["skipped"] == 3
    rows = read_csv(csv_path)
    assert len(rows) == 4
    assert len({row["path"] for row in rows}) == 4
    hashes = {row["path"]: row["input_sha256"] for row in rows}
    assert hashes[str(replaced)] == file_sha256(replaced)


def test_csv_resume_other_model_exits_2(tiny_int8_model, tiny_int8_probability_model, sample_images, tmp_path):
    csv_path = tmp_path / "out.csv"
    invoke("infer", sample_images, "--model", tiny_int8_model, "--csv", csv_path)
    result = invoke("infer", sample_images, "--model", tiny_int8_probability_model, "--csv", csv_path)
    assert result.exit_code == ExitCode.USAGE
    assert "model sha256" in result.stderr


@pytest.mark.parametrize("option", ["--csv", "--audit-log"])
def test_device_output_exits_2(tiny_int8_model, sample_images, option):
    result = invoke("infer", sample_images, "--model", tiny_int8_model, option, os.devnull)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{option} {os.devnull} is not a regular file" in result.stderr


def test_audit_log_one_line_per_file(tiny_int8_model, sample_images, tmp_path):
    write_bad_files(sample_images)
    log_path = tmp_path / "audit.jsonl"
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--audit-log", log_path)
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(entries) == 7
    hashes = {file_sha256(path) for path in sample_images.rglob("*") if path.is_file()}
    assert {entry["input_sha256"] for entry in entries} == hashes
    assert {entry["model_sha256"] for entry in entries} == {load_model(tiny_int8_model).sha256}
    assert str(sample_images) not in log_path.read_text()


def test_info_json(tiny_int8_model):
    result = invoke("info", "--model", tiny_int8_model, "--json")
    assert result.exit_code == ExitCode.OK, result.output
    report = json.loads(result.stdout)
    assert report["edgefrac_version"] == __version__
    assert report["numpy_version"] == np.__version__
    assert report["runtime"]["name"] in ("litert", "tflite_runtime", "tensorflow")
    assert report["runtime"]["version"]
    model = report["model"]
    assert model["sha256"] == load_model(tiny_int8_model).sha256
    assert model["threshold"]["value"] == 0.5
    assert model["preprocessing"]["height"] == 32
    assert model["quantization"]["input"]["dtype"] == "int8"
    assert model["provenance"]["calibration_images"] == 16
    assert model["loads_in_runtime"] is True


def test_info_text(tiny_int8_model):
    result = invoke("info", "--model", tiny_int8_model)
    assert result.exit_code == ExitCode.OK, result.output
    assert "threshold:" in result.stdout
    assert "zero_point:" in result.stdout


def test_info_missing_model_exits_1(tmp_path):
    result = invoke("info", "--model", tmp_path / "absent.efm", "--json")
    assert result.exit_code == ExitCode.RUNTIME_FAILURE
    report = json.loads(result.stdout)
    assert report["runtime"] is not None
    assert "not found" in report["problems"][0]


def test_export_writes_tflite(tiny_int8_model, tmp_path):
    output = tmp_path / "model.tflite"
    result = invoke("export", tiny_int8_model, output)
    assert result.exit_code == ExitCode.OK, result.output
    assert output.read_bytes() == load_model(tiny_int8_model).tflite
    info = json.loads(invoke("info", "--model", output, "--json").stdout)
    assert info["model"]["has_card"] is False
    assert info["model"]["preprocessing"]["width"] == 32


def test_export_corrupt_model_exits_1(tiny_int8_model, tmp_path):
    truncated = tmp_path / "truncated.efm"
    truncated.write_bytes(tiny_int8_model.read_bytes()[:-500])
    output = tmp_path / "model.tflite"
    result = invoke("export", truncated, output)
    assert result.exit_code == ExitCode.RUNTIME_FAILURE
    assert not output.exists()


def test_export_onto_itself_exits_2(tiny_int8_model, tmp_path):
    copy = tmp_path / "model.efm"
    copy.write_bytes(tiny_int8_model.read_bytes())
    result = invoke("export", copy, copy)
    assert result.exit_code == ExitCode.USAGE
    assert copy.read_bytes() == tiny_int8_model.read_bytes()


def test_every_command_has_help():
    for name in sorted(main.commands):
        result = invoke(name, "--help")
        assert result.exit_code == 0, name
        assert "Usage:" in result.stdout, name


def test_infer_help_lists_exit_codes():
    help_text = invoke("infer", "--help").stdout
    for code in ExitCode:
        if code is not ExitCode.DRIFT_EXCEEDED:
            assert f"  {int(code)}  " in help_text, code


def run_edgefrac(*arguments, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EDGEFRAC_SCRIPT), *map(str, arguments)], capture_output=True, text=True, timeout=300, **options
    )


@pytest.mark.slow
def test_script_exit_codes(tiny_int8_model, sample_images, tmp_path):
    good = run_edgefrac("infer", sample_images, "--model", tiny_int8_model, "--json")
    assert good.returncode == ExitCode.OK, good.stderr
    assert len(json.loads(good.stdout)["results"]) == 4
    assert "Scoring" not in good.stderr

    write_bad_files(sample_images)
    mixed = run_edgefrac("infer", sample_images, "--model", tiny_int8_model, "--json")
    assert mixed.returncode == ExitCode.SOME_INPUTS_FAILED, mixed.stderr
    assert len(json.loads(mixed.stdout)["results"]) == 7
    assert "Traceback" not in mixed.stderr

    missing = run_edgefrac("infer", tmp_path / "absent", "--model", tiny_int8_model)
    assert missing.returncode == ExitCode.USAGE

    not_a_model = tmp_path / "model.efm"
    not_a_model.write_text("not a model")
    broken = run_edgefrac("infer", sample_images, "--model", not_a_model)
    assert broken.returncode == ExitCode.RUNTIME_FAILURE
    assert "Traceback" not in broken.stderr


@pytest.mark.slow
def test_broken_pipe_exits_quietly(tiny_int8_model, sample_images):
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [str(EDGEFRAC_SCRIPT), "infer", str(sample_images), "--model", str(tiny_int8_model)],
        stdout=write_end, stderr=subprocess.PIPE, text=True,
    )
    os.close(write_end)
    os.close(read_end)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == ExitCode.BROKEN_PIPE, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def close_stdout() -> None:
    os.close(1)


@pytest.mark.slow
def test_closed_stdout_exits_1(tiny_int8_model, sample_images):
    completed = run_edgefrac("infer", sample_images, "--model", tiny_int8_model, preexec_fn=close_stdout)
    assert completed.returncode == ExitCode.RUNTIME_FAILURE, completed.stderr
    assert "Error: standard output is closed" in completed.stderr
    assert "Traceback" not in completed.stderr


def write_marked_dicom(path: Path, marker: str, *, frames: int = 1, pixel_data: bool = True) -> Path:
    """Write a small DICOM radiograph whose patient and study fields contain ``marker``."""
    from pydicom import uid
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.PatientName = marker
    dataset.PatientID = marker
    dataset.StudyDescription = marker
    if pixel_data:
        pixels = np.tile(np.linspace(0, 4095, 24).astype(np.uint16), (frames, 20, 1)).squeeze()
        dataset.set_pixel_data(pixels, "MONOCHROME1", 12)
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_no_patient_field_in_outputs(tiny_int8_model, tmp_path):
    pytest.importorskip("pydicom")
    marker = "ZZMARKER^Patient"
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_marked_dicom(folder / "ok.dcm", marker)
    write_marked_dicom(folder / "frames.dcm", marker, frames=2)
    write_marked_dicom(folder / "empty.dcm", marker, pixel_data=False)
    csv_path = tmp_path / "out.csv"
    log_path = tmp_path / "audit.jsonl"
    result = invoke(
        "-vv", "infer", folder, "--model", tiny_int8_model, "--json", "--csv", csv_path, "--audit-log", log_path
    )
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED, result.output
    statuses = {Path(entry["path"]).name: entry["status"] for entry in json.loads(result.stdout)["results"]}
    assert statuses == {"empty.dcm": "error", "frames.dcm": "error", "ok.dcm": "ok"}
    for text in (result.stdout, result.stderr, csv_path.read_text(), log_path.read_text()):
        assert "ZZMARKER" not in text


def test_infer_suffixless_dicom_scored(tiny_int8_model, tmp_path):
    pytest.importorskip("pydicom")
    series = tmp_path / "DICOM" / "ST0" / "SE0"
    series.mkdir(parents=True)
    write_marked_dicom(series / "IM0", "TEST^Patient")
    result = invoke("infer", tmp_path / "DICOM", "--model", tiny_int8_model, "--json")
    assert result.exit_code == ExitCode.OK, result.output
    results = json.loads(result.stdout)["results"]
    assert [entry["path"] for entry in results] == [str(series / "IM0")]
    assert results[0]["status"] == "ok"


@pytest.mark.slow
def test_progress_bar_on_terminal(tiny_int8_model, sample_images):
    pty = pytest.importorskip("pty")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(EDGEFRAC_SCRIPT), "infer", str(sample_images), "--model", str(tiny_int8_model)],
        stdout=subprocess.PIPE, stderr=terminal,
    )
    os.close(terminal)
    stderr = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # Linux raises EIO once the child has closed the terminal
            break
        if not chunk:
            break
        stderr += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == ExitCode.OK
    assert b"Scoring" in stderr
    assert b"Scoring" not in stdout
    assert len(stdout.decode().splitlines()) == 5


def test_scaling_override_warns(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--scaling", "-1_1")
    assert result.exit_code == ExitCode.OK, result.output
    assert "scaling 0_1 -> -1_1 overridden on the command line" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert "sensitivity" not in summary
    assert "preprocessing overridden" in summary
    document = json.loads(
        invoke("infer", sample_images, "--model", tiny_int8_model, "--scaling", "-1_1", "--json").stdout
    )
    assert document["summary"]["preprocessing"] == "32x32 RGB bilinear -1_1 logit"
    assert "preprocessing overridden" in document["summary"]["threshold_chosen_on"]


def test_card_values_given_again_do_not_warn(tiny_int8_model, sample_images):
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--scaling", "0_1")
    assert result.exit_code == ExitCode.OK, result.output
    assert "overridden" not in result.stderr


def test_csv_rejects_other_preprocessing(tiny_int8_model, sample_images, tmp_path):
    csv_path = tmp_path / "out.csv"
    first = invoke("infer", sample_images / "scan0.jpg", "--model", tiny_int8_model, "--csv", csv_path)
    assert first.exit_code == ExitCode.OK, first.output
    assert read_csv(csv_path)[0]["preprocessing"] == "32x32 RGB bilinear 0_1 logit"
    second = invoke(
        "infer", sample_images / "scan1.jpg", "--model", tiny_int8_model, "--csv", csv_path, "--resize", "nearest"
    )
    assert second.exit_code == ExitCode.USAGE
    assert "32x32 RGB nearest 0_1 logit" in second.stderr
    assert len(read_csv(csv_path)) == 1


def test_csv_resumes_from_another_folder(tiny_int8_model, sample_images, tmp_path, monkeypatch):
    csv_path = tmp_path / "out.csv"
    other = tmp_path / "other" / "images"
    other.mkdir(parents=True)
    (other / "scan0.jpg").write_bytes((sample_images / "sub" / "scan3.tif").read_bytes())
    for folder in (sample_images.parent, other.parent):
        monkeypatch.chdir(folder)
        result = invoke("infer", "images/scan0.jpg", "--model", tiny_int8_model, "--csv", csv_path)
        assert result.exit_code == ExitCode.OK, result.output
        assert "changed since it was scored" not in result.stderr
    paths = [row["path"] for row in read_csv(csv_path)]
    assert paths == [str(sample_images / "scan0.jpg"), str(other / "scan0.jpg")]
    monkeypatch.chdir(sample_images.parent)
    again = invoke("infer", "images/scan0.jpg", "--model", tiny_int8_model, "--csv", csv_path)
    assert "skipped 1" in again.stderr


def test_truncated_rows_marked(tiny_int8_model, sample_images, tmp_path):
    truncated = write_bad_files(sample_images)[2]
    csv_path = tmp_path / "out.csv"
    lenient = invoke("infer", truncated, "--model", tiny_int8_model, "--allow-truncated", "--csv", csv_path, "--json")
    assert lenient.exit_code == ExitCode.OK, lenient.output
    assert json.loads(lenient.stdout)["results"][0]["status"] == "truncated"
    assert json.loads(lenient.stdout)["summary"]["truncated"] == 1
    assert read_csv(csv_path)[0]["status"] == "truncated"
    table = invoke("infer", truncated, "--model", tiny_int8_model, "--allow-truncated")
    assert table_rows(table.stdout)[0].endswith("(truncated file)")
    assert "(1 from truncated files)" in table.stderr
    strict = invoke("infer", truncated, "--model", tiny_int8_model, "--csv", csv_path)
    assert strict.exit_code == ExitCode.SOME_INPUTS_FAILED, strict.output
    assert [row["status"] for row in read_csv(csv_path)] == ["error"]


def test_unlistable_folder_exits_3(tiny_int8_model, sample_images, monkeypatch):
    # Root reads any folder whatever its mode, so the listing error is raised here instead.
    locked = sample_images / "sub"
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = invoke("infer", sample_images, "--model", tiny_int8_model, "--json")
    assert result.exit_code == ExitCode.SOME_INPUTS_FAILED, result.output
    errors = {item["path"]: item["error"] for item in json.loads(result.stdout)["results"] if item["error"]}
    assert errors == {str(locked): "cannot list this folder (Permission denied), so its files were not scored"}
    assert "contains no image" not in result.stderr


@pytest.mark.slow
def test_glob_unlistable_folder_exits_3(tiny_int8_model, sample_images):
    locked = sample_images / "locked"
    locked.mkdir()
    (locked / "scan4.jpg").write_bytes((sample_images / "scan0.jpg").read_bytes())
    locked.chmod(0)
    try:
        # Runs as root too: the prefix drops the capabilities that let root list a mode 000 folder.
        prefix = command_without_folder_access(locked)
        completed = subprocess.run(
            [*prefix, str(EDGEFRAC_SCRIPT), "infer", f"{sample_images}/**/*.*", "--model", str(tiny_int8_model), "--json"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        locked.chmod(0o755)
    assert completed.returncode == ExitCode.SOME_INPUTS_FAILED, completed.stderr
    results = json.loads(completed.stdout)["results"]
    errors = {item["path"]: item["error"] for item in results if item["error"]}
    assert errors == {str(locked): "cannot list this folder (Permission denied), so its files were not scored"}
    assert sum(1 for item in results if item["status"] != "error") == 4
    assert "Traceback" not in completed.stderr


def test_table_escapes_control_characters(tiny_int8_model, sample_images):
    (sample_images / "scan0.jpg").rename(sample_images / "new\nline.jpg")
    result = invoke("infer", sample_images, "--model", tiny_int8_model)
    assert result.exit_code == ExitCode.OK, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 4
    assert any(row.startswith(f"{sample_images}/new\\x0aline.jpg ") for row in rows)


@pytest.mark.slow
def test_json_broken_pipe_exits_141(tiny_int8_model, sample_images, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for index in range(400):
        (many / f"{index:03d}.jpg").symlink_to(sample_images / "scan0.jpg")
    process = subprocess.Popen(
        [str(EDGEFRAC_SCRIPT), "infer", str(many), "--model", str(tiny_int8_model), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    # Read part of the document (it is over 64 KiB, more than a pipe buffer), then close the pipe.
    process.stdout.read(100)
    process.stdout.close()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == ExitCode.BROKEN_PIPE, stderr
    assert b"Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a device whose writes fail with ENOSPC")
def test_stdout_disk_full_exits_1(tiny_int8_model, sample_images):
    with open("/dev/full", "w") as full:
        completed = subprocess.run(
            [str(EDGEFRAC_SCRIPT), "infer", str(sample_images), "--model", str(tiny_int8_model), "--json"],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
        )
    assert completed.returncode == ExitCode.RUNTIME_FAILURE, completed.stderr
    assert "Error: cannot write the results to standard output (No space left on device)" in completed.stderr
    assert "Traceback" not in completed.stderr
