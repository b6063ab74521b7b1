"""Result files: CSV rows that survive interruption, resume rules, the audit log."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefrac import __version__
from edgefrac.batch import ScoreRecord, Status
from edgefrac.errors import OutputWriteError, UsageError
from edgefrac.dataset import file_sha256
from edgefrac.results import CSV_COLUMNS, LEGACY_CSV_COLUMNS, AppendOnlyFile, AuditLog, CsvResults, read_complete_rows

MODEL_SHA = "a" * 64
OTHER_SHA = "b" * 64
INPUT_SHA = "c" * 64


def _ok(path: str, probability: float = 0.75) -> ScoreRecord:
    return ScoreRecord(path, Status.OK, 0.5, probability=probability, label="fractured", input_sha256=INPUT_SHA)


def _error(path: str) -> ScoreRecord:
    return ScoreRecord(path, Status.ERROR, 0.5, error="image data is truncated")


def _write(csv_path, records, *, model_sha256=MODEL_SHA, threshold=0.5) -> CsvResults:
    with CsvResults(csv_path, model_sha256=model_sha256, threshold=threshold) as table:
        for record in records:
            table.write(record)
    return table


def _rows(csv_path) -> list[dict]:
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def test_csv_columns_and_values(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg", 0.8125), _error("/x/b.jpg")])
    rows = _rows(csv_path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["probability"] == "0.8125"
    assert rows[0]["model_sha256"] == MODEL_SHA
    assert rows[0]["edgefrac_version"] == __version__
    assert rows[1]["status"] == "error"
    assert rows[1]["error"] == "image data is truncated"
    assert rows[1]["probability"] == ""


def test_resume_skips_ok_rows(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg"), _ok("/x/b.jpg")])
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert table.is_done("/x/a.jpg", INPUT_SHA)
        assert table.is_done("/x/./b.jpg", INPUT_SHA)
        assert not table.is_done("/x/c.jpg", INPUT_SHA)


def test_resume_retries_error_rows(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg"), _error("/x/b.jpg"), _ok("/x/c.jpg")])
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert not table.is_done("/x/b.jpg", INPUT_SHA)
        assert table.retried == 1
        table.write(_ok("/x/b.jpg"))
    paths = [row["path"] for row in _rows(csv_path)]
    assert paths == ["/x/a.jpg", "/x/c.jpg", "/x/b.jpg"]


def test_resume_changed_content_not_done(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert not table.is_done("/x/a.jpg", "d" * 64)
        assert not table.is_done("/x/a.jpg", None)


def test_input_sha256_column_written(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg"), _error("/x/b.jpg")])
    rows = _rows(csv_path)
    assert rows[0]["input_sha256"] == INPUT_SHA
    assert rows[1]["input_sha256"] == ""


def test_select_pending_replaces_changed_row(tmp_path):
    same = tmp_path / "same.jpg"
    same.write_bytes(b"first scan")
    replaced = tmp_path / "replaced.jpg"
    replaced.write_bytes(b"old patient")
    new = tmp_path / "new.jpg"
    new.write_bytes(b"new scan")
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [
        ScoreRecord(str(same), Status.OK, 0.5, probability=0.1, label="not_fractured", input_sha256=file_sha256(same)),
        ScoreRecord(str(replaced), Status.OK, 0.5, probability=0.9, label="fractured",
                    input_sha256=file_sha256(replaced)),
    ])
    replaced.write_bytes(b"other patient")
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        pending = table.select_pending([same, replaced, new])
        assert pending == [replaced, new]
        assert table.changed == 1
        assert [row["path"] for row in _rows(csv_path)] == [str(same)]
        table.write(ScoreRecord(str(replaced), Status.OK, 0.5, probability=0.2, label="not_fractured",
                                input_sha256=file_sha256(replaced)))
    rows = _rows(csv_path)
    assert [row["path"] for row in rows] == [str(same), str(replaced)]
    assert rows[1]["input_sha256"] == file_sha256(replaced)


def test_legacy_table_matches_by_path(tmp_path, caplog):
    csv_path = tmp_path / "out.csv"
    legacy_header = ",".join(LEGACY_CSV_COLUMNS[-1])
    csv_path.write_text(f"{legacy_header}\n/x/a.jpg,ok,0.75,fractured,0.5,,{MODEL_SHA},0.0.1\n")
    with caplog.at_level(logging.WARNING, logger="edgefrac.results"):
        table = CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5)
    with table:
        assert table.is_done("/x/a.jpg", "d" * 64)
        table.write(_ok("/x/b.jpg"))
    assert any("no input_sha256" in record.getMessage() for record in caplog.records)
    rows = _rows(csv_path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [row["input_sha256"] for row in rows] == ["", INPUT_SHA]


def test_partial_last_line_dropped(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    complete = csv_path.read_bytes()
    with open(csv_path, "ab") as handle:
        handle.write(b"/x/b.jpg,ok,0.3")
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert not table.is_done("/x/b.jpg", INPUT_SHA)
    assert csv_path.read_bytes() == complete


def test_cut_inside_quoted_field_dropped(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    complete = csv_path.read_bytes()
    with open(csv_path, "ab") as handle:
        handle.write(b'/x/b.jpg,error,,,0.5,"image data is trun')
    CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5).close()
    assert csv_path.read_bytes() == complete


def test_zero_filled_tail_dropped(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    complete = csv_path.read_bytes()
    with open(csv_path, "ab") as handle:
        handle.write(b"\0" * 300)
    CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5).close()
    assert csv_path.read_bytes() == complete


def test_wrong_column_count_dropped(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    complete = csv_path.read_bytes()
    with open(csv_path, "ab") as handle:
        handle.write(b"/x/b.jpg,ok,0.3\n")
    rows, length = read_complete_rows(csv_path.read_bytes())
    assert len(rows) == 1
    assert length == len(complete)


def test_newline_in_path_round_trips(tmp_path):
    csv_path = tmp_path / "out.csv"
    odd = "/x/line\nbreak, \"quoted\".jpg"
    _write(csv_path, [_ok(odd), _ok("/x/a.jpg")])
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert table.is_done(odd, INPUT_SHA)
        assert table.is_done("/x/a.jpg", INPUT_SHA)


def test_non_utf8_path_round_trips(tmp_path):
    csv_path = tmp_path / "out.csv"
    odd = os.fsdecode(b"/x/r\xf6ntgen.jpg")
    _write(csv_path, [_ok(odd)])
    assert b"/x/r\xf6ntgen.jpg" in csv_path.read_bytes()
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert table.is_done(odd, INPUT_SHA)


def test_other_model_rejected(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    with pytest.raises(UsageError, match="model sha256"):
        CsvResults(csv_path, model_sha256=OTHER_SHA, threshold=0.5)


def test_other_threshold_rejected(tmp_path):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg")])
    with pytest.raises(UsageError, match="threshold"):
        CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.3)


def test_foreign_file_rejected(tmp_path):
    csv_path = tmp_path / "notes.csv"
    csv_path.write_text("name,value\nx,1\n")
    with pytest.raises(UsageError, match="not an edgefrac results CSV"):
        CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5)
    assert csv_path.read_text() == "name,value\nx,1\n"


def test_unwritable_folder_error(tmp_path):
    with pytest.raises(OutputWriteError, match="cannot write"):
        CsvResults(tmp_path / "absent" / "out.csv", model_sha256=MODEL_SHA, threshold=0.5)


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_csv_device_rejected(device):
    if not Path(device).exists():
        pytest.skip(f"{device} is not available on this system")
    with pytest.raises(UsageError, match="is not a regular file"):
        CsvResults(device, model_sha256=MODEL_SHA, threshold=0.5)


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_audit_log_device_rejected(device):
    if not Path(device).exists():
        pytest.skip(f"{device} is not available on this system")
    with pytest.raises(UsageError, match="is not a regular file"):
        AuditLog(device, model_sha256=MODEL_SHA)


def test_fifo_outputs_rejected(tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="--csv .* is not a regular file"):
        CsvResults(fifo, model_sha256=MODEL_SHA, threshold=0.5)
    with pytest.raises(UsageError, match="--audit-log .* is not a regular file"):
        AuditLog(fifo, model_sha256=MODEL_SHA)


def test_csv_folder_rejected(tmp_path):
    with pytest.raises(UsageError, match="is a folder"):
        CsvResults(tmp_path, model_sha256=MODEL_SHA, threshold=0.5)


def test_audit_log_fields(tmp_path):
    log_path = tmp_path / "audit.jsonl"
    with AuditLog(log_path, model_sha256=MODEL_SHA) as log:
        log.write(_ok("/clinic/Jane Doe/a.jpg", 0.25))
        log.write(ScoreRecord("/clinic/Jane Doe/b.jpg", Status.ERROR, 0.5, error="/clinic/Jane Doe/b.jpg is a directory"))
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(lines[0]) == ["edgefrac_version", "input_sha256", "model_sha256", "result", "time"]
    assert lines[0]["input_sha256"] == "c" * 64
    assert lines[0]["model_sha256"] == MODEL_SHA
    assert lines[0]["result"]["probability"] == 0.25
    assert lines[1]["result"]["status"] == "error"
    assert "Jane Doe" not in log_path.read_text()


def test_audit_log_appends_after_partial_line(tmp_path):
    log_path = tmp_path / "audit.jsonl"
    log_path.write_bytes(b'{"time": "2026-01-01"}\n{"time": "20')
    with AuditLog(log_path, model_sha256=MODEL_SHA) as log:
        log.write(_ok("/x/a.jpg"))
    lines = log_path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["model_sha256"] == MODEL_SHA


_FILE_SIZE_LIMIT_SCRIPT = """
import resource, signal, sys
from edgefrac.batch import ScoreRecord, Status
from edgefrac.errors import OutputWriteError
from edgefrac.results import CsvResults
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
table = CsvResults(sys.argv[1], model_sha256="a" * 64, threshold=0.5)
try:
    for index in range(100):
        table.write(ScoreRecord(f"/x/{index:03d}.jpg", Status.OK, 0.5, probability=0.5, label="fractured"))
except OutputWriteError as error:
    print(error)
    sys.exit(7)
"""


def test_file_size_limit_keeps_rows(tmp_path):
    csv_path = tmp_path / "out.csv"
    completed = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(csv_path)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 7, completed.stderr
    assert "file size limit reached" in completed.stdout
    data = csv_path.read_bytes()
    assert data.endswith(b"\n")
    rows, length = read_complete_rows(data)
    assert length == len(data)
    assert [row[0] for row in rows] == [f"/x/{index:03d}.jpg" for index in range(len(rows))]
    assert len(rows) >= 1


def test_disk_full_error(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available on this system")
    output = AppendOnlyFile("/dev/full")
    with pytest.raises(OutputWriteError, match="no space left on device"):
        output.append(b"row\n")
    output.close()


def test_legacy_relative_paths_made_absolute(tmp_path, monkeypatch, caplog):
    csv_path = tmp_path / "out.csv"
    header = ",".join(LEGACY_CSV_COLUMNS[0])
    csv_path.write_text(f"{header}\nscans/a.jpg,ok,0.75,fractured,0.5,,{MODEL_SHA},0.0.1,{INPUT_SHA}\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="edgefrac.results"):
        table = CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5, preprocessing="32x32 RGB bilinear 0_1 logit")
    with table:
        assert table.is_done(tmp_path / "scans" / "a.jpg", INPUT_SHA)
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "taken as relative to the current folder" in messages
    assert "do not record their preprocessing" in messages
    rows = _rows(csv_path)
    assert rows[0]["path"] == str(tmp_path / "scans" / "a.jpg")
    assert rows[0]["preprocessing"] == "32x32 RGB bilinear 0_1 logit"
    with pytest.raises(UsageError, match="preprocessing"):
        CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5, preprocessing="32x32 RGB nearest 0_1 logit")


def test_linked_folder_matches_real_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok(str(real / "a.jpg"))])
    with CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5) as table:
        assert table.is_done(tmp_path / "link" / "a.jpg", INPUT_SHA)
        assert not table.is_done(tmp_path / "link" / "b.jpg", INPUT_SHA)


def test_crlf_table_resumed_and_rewritten(tmp_path, caplog):
    csv_path = tmp_path / "out.csv"
    _write(csv_path, [_ok("/x/a.jpg"), _ok("/x/b.jpg")])
    lf = csv_path.read_bytes()
    csv_path.write_bytes(lf.replace(b"\n", b"\r\n"))
    with caplog.at_level(logging.WARNING, logger="edgefrac.results"):
        table = CsvResults(csv_path, model_sha256=MODEL_SHA, threshold=0.5)
    with table:
        assert table.is_done("/x/a.jpg", INPUT_SHA)
        assert table.is_done("/x/b.jpg", INPUT_SHA)
    assert any("CRLF" in record.getMessage() for record in caplog.records)
    assert csv_path.read_bytes() == lf
