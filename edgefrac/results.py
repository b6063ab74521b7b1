"""Durable result files: the ``--csv`` table with resume, and the ``--audit-log`` JSON lines.

Both files are append-only. Each record is written with one ``write`` call and
then ``fsync``-ed, so a power cut or ``kill -9`` can lose at most the record
being written, and that record can only be a partial last line. When a file is
opened again, every record is checked and the file is truncated back to the
end of the last complete one before anything is appended.

Paths are written with Python's ``surrogateescape`` error handler, so a file
name that is not valid UTF-8 keeps its exact bytes and still matches on resume.
"""

from __future__ import annotations

import csv
import datetime
import errno
import io
import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from edgefrac import __version__
from edgefrac.batch import ScoreRecord, Status, regular_file_sha256, utf8_path
from edgefrac.images import display_path
from edgefrac.errors import OutputWriteError, UsageError

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    # NOTE: clinics sometimes name files after patients. The audit log leaves paths out for
    # that reason, but this CSV (absolute paths) and the table (paths as given) keep them.
    "path",
    "status",
    "probability",
    "label",
    "threshold",
    "error",
    "model_sha256",
    "edgefrac_version",
    "input_sha256",
    "preprocessing",
)
# Headers of tables written by older versions, before the last one or two columns existed. Opening
# one rewrites it with the current header, and its rows get empty values in the new columns.
LEGACY_CSV_COLUMNS = (CSV_COLUMNS[:-1], CSV_COLUMNS[:-2])
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file size limit reached"}
if hasattr(errno, "EDQUOT"):
    _DISK_FULL[errno.EDQUOT] = "disk quota exceeded"


class AppendOnlyFile:
    """A file that grows by whole records, each one written and synced before the next."""

    def __init__(self, path: str | os.PathLike, *, header: bytes = b""):
        """Open ``path`` for appending, creating it with ``header`` (not counted as a record) if empty."""
        self.path = Path(path)
        self.records_written = 0
        try:
            self._descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise _write_error(self.path, error, 0) from None
        if header and os.fstat(self._descriptor).st_size == 0:
            self.append(header)
            self.records_written = 0

    def append(self, data: bytes) -> None:
        """Write ``data`` and sync it; a failed write leaves the file as it was before the call."""
        start = os.fstat(self._descriptor).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._descriptor, view)
                view = view[written:]
            os.fsync(self._descriptor)
        except OSError as error:
            self._undo(start)
            raise _write_error(self.path, error, self.records_written) from None
        self.records_written += 1

    def _undo(self, size: int) -> None:
        try:
            os.ftruncate(self._descriptor, size)
            os.fsync(self._descriptor)
        except OSError as error:
            logger.warning("cannot remove the partial record at the end of %s: %s", self.path, error)

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1

    def __enter__(self) -> AppendOnlyFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _write_error(path: Path, error: OSError, records_written: int) -> OutputWriteError:
    reason = _DISK_FULL.get(error.errno or 0, error.strerror or str(error))
    outcome = f"the {records_written} record(s) written before are kept" if records_written else "nothing was written"
    advice = "free some space, then run the same command again to resume" if error.errno in _DISK_FULL else (
        "check the path and its permissions"
    )
    return OutputWriteError(f"cannot write {path}: {reason}; {outcome}; {advice}")


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.flush()
        os.fsync(handle.fileno())


def _format_row(values: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(list(values))
    return buffer.getvalue()


def read_complete_rows(data: bytes) -> tuple[list[list[str]], int]:
    """Parse a results CSV and return its complete data rows and the byte length they span.

    A row counts as complete only when writing it again with this module's
    format gives exactly the bytes in the file. This check rejects a partial
    last line, a line cut inside a quoted field and zero bytes left by a crash.
    Rows of a table with a legacy header are returned with empty values in the
    columns it lacks, so every row has ``CSV_COLUMNS``.

    Raises:
        UsageError: the data does not start with this module's header.
    """
    text = data.decode(_ENCODING, errors=_ERRORS)
    columns = _header_columns(text)
    position = len(_format_row(columns))
    rows: list[list[str]] = []
    reader = csv.reader(io.StringIO(text[position:], newline=""))
    try:
        for row in reader:
            formatted = _format_row(row)
            if len(row) != len(columns) or not text.startswith(formatted, position):
                break
            rows.append(row + [""] * (len(CSV_COLUMNS) - len(columns)))
            position += len(formatted)
    except csv.Error:
        pass
    return rows, len(text[:position].encode(_ENCODING, errors=_ERRORS))


def _header_columns(text: str) -> tuple[str, ...]:
    for columns in (CSV_COLUMNS, *LEGACY_CSV_COLUMNS):
        if text.startswith(_format_row(columns)):
            return columns
    raise UsageError(
        "the file is not an edgefrac results CSV (its first line is not "
        f"{_format_row(CSV_COLUMNS).strip()!r}); pass a new --csv path"
    )


class CsvResults:
    """The ``--csv`` results table: one row per file, appended and synced as each file finishes.

    Opening an existing table resumes it. A file is skipped only when it has an
    ``ok`` row with the same absolute path and the same content SHA-256, because
    scanners reuse file names and a replaced file must not keep the old
    patient's result. Paths are stored absolute, so a run from another folder
    resumes the same table. Rows from tables written before the
    ``input_sha256`` column existed match by path alone, with a logged warning.
    Files with an ``error`` or ``truncated`` row are scored again, because the
    cause (a file copied while the run was going, a permission since fixed) may
    be gone. A table only takes rows scored with one model, threshold and
    preprocessing, so its labels stay comparable. Rows that will be replaced are dropped
    first: the kept rows are rewritten through a synced temporary file and a
    rename. So the table never has two rows for one file, and a crash during
    the rewrite leaves either the old or the new table.
    """

    def __init__(self, path: str | os.PathLike, *, model_sha256: str, threshold: float, preprocessing: str = ""):
        self.path = Path(path)
        self.model_sha256 = model_sha256
        self.threshold = threshold
        self.preprocessing = preprocessing
        self.retried = 0
        self.changed = 0
        self._ok_rows: dict[str, list[str]] = {}
        self._prepare()
        self._file = self._open_for_append()

    def _open_for_append(self) -> AppendOnlyFile:
        return AppendOnlyFile(self.path, header=_format_row(CSV_COLUMNS).encode(_ENCODING))

    def _prepare(self) -> None:
        if not self.path.exists():
            return
        reject_non_regular(self.path, "--csv")
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise OutputWriteError(f"cannot read {self.path} to resume it: {error.strerror}") from None
        if not data:
            return
        windows_endings = data.split(b"\n", 1)[0].endswith(b"\r")
        if windows_endings:
            # A spreadsheet saved the table with CRLF line endings. The rows are kept and written back with LF.
            logger.warning("%s has Windows (CRLF) line endings; rewriting it with LF", self.path)
            data = data.replace(b"\r\n", b"\n")
        try:
            rows, complete_length = read_complete_rows(data)
        except UsageError as error:
            raise UsageError(f"--csv {self.path}: {error}") from None
        self._check_same_model(rows)
        ok_rows = [row for row in rows if row[1] == Status.OK.value]
        self.retried = len(rows) - len(ok_rows)
        legacy = not data.startswith(_format_row(CSV_COLUMNS).encode(_ENCODING)) or windows_endings
        if complete_length < len(data):
            logger.warning(
                "%s ends with an incomplete row (%d bytes, left by an interrupted run); removing it",
                self.path, len(data) - complete_length,
            )
        if self.retried:
            logger.info("%s: scoring %d file(s) with an error or truncated row again", self.path, self.retried)
        if legacy:
            ok_rows = self._upgrade_legacy_rows(ok_rows)
        if self.retried or legacy:
            self._rewrite(ok_rows)
        elif complete_length < len(data):
            _truncate(self.path, complete_length)
        unhashed = sum(1 for row in ok_rows if not row[8])
        if unhashed:
            logger.warning(
                "%s: %d row(s) have no input_sha256 (written by an older edgefrac), so those files are skipped "
                "when the path matches even if the file was replaced; use a new --csv path to score them again",
                self.path, unhashed,
            )
        self._ok_rows = {_key(row[0]): row for row in ok_rows}

    def _upgrade_legacy_rows(self, rows: list[list[str]]) -> list[list[str]]:
        """Give rows from an older table absolute paths and this run's preprocessing, with a warning for each."""
        relative = [row for row in rows if not os.path.isabs(row[0])]
        if relative:
            logger.warning(
                "%s: %d row(s) written by an older edgefrac have paths relative to the folder that run was "
                "started in; they are taken as relative to the current folder %s",
                self.path, len(relative), os.getcwd(),
            )
        if self.preprocessing and any(not row[9] for row in rows):
            logger.warning(
                "%s: rows written by an older edgefrac do not record their preprocessing; they are taken to "
                "match this run's (%s). Use a new --csv path if the earlier run used other --scaling, --resize "
                "or --output-kind values",
                self.path, self.preprocessing,
            )
        return [
            [_absolute(row[0]), *row[1:9], row[9] or self.preprocessing]
            for row in rows
        ]

    def _check_same_model(self, rows: list[list[str]]) -> None:
        for row in rows:
            if row[6] != self.model_sha256:
                raise UsageError(
                    f"--csv {self.path} contains rows scored by model sha256 {row[6][:12]}..., but this run uses "
                    f"{self.model_sha256[:12]}...; pass a new --csv path or use the model of the earlier run"
                )
            if row[1] == Status.OK.value and _parse_float(row[4]) != self.threshold:
                raise UsageError(
                    f"--csv {self.path} contains rows labelled at threshold {row[4]}, but this run uses "
                    f"{self.threshold}; pass a new --csv path or the same --threshold as the earlier run"
                )
            if row[9] and self.preprocessing and row[9] != self.preprocessing:
                raise UsageError(
                    f"--csv {self.path} contains rows scored with preprocessing {row[9]!r}, but this run uses "
                    f"{self.preprocessing!r}; pass a new --csv path or the same --scaling, --resize, "
                    "--output-kind and --test-time-augmentation as the earlier run"
                )

    def _rewrite(self, rows: list[list[str]]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        text = _format_row(CSV_COLUMNS) + "".join(_format_row(row) for row in rows)
        try:
            with open(temporary, "wb") as handle:
                handle.write(text.encode(_ENCODING, errors=_ERRORS))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise _write_error(self.path, error, 0) from None
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def is_done(self, path: str | os.PathLike, input_sha256: str | None) -> bool:
        """Return whether ``path`` has an ``ok`` row for the content with SHA-256 ``input_sha256``.

        A row without a hash (legacy table) matches by path alone. A file whose
        hash is unknown (``None``, for example because it cannot be read now)
        never matches a hashed row.
        """
        row = self._ok_rows.get(_key(os.fspath(path)))
        if row is None:
            return False
        return not row[8] or row[8] == input_sha256

    def select_pending(self, paths: Iterable[Path]) -> list[Path]:
        """Return the paths that need scoring, and drop the rows of files whose content changed.

        Files with an ``ok`` row for the same path are hashed to compare their
        content. The rows of changed files are removed (through the same atomic
        rewrite as error rows) so their new rows replace them.
        """
        # NOTE: every already-scored file is read again to hash it, so resuming over a large
        # archive on a Pi costs one full read of it. Size and mtime would be cheaper but weaker.
        pending: list[Path] = []
        changed_keys: set[str] = set()
        for path in paths:
            key = _key(os.fspath(path))
            if key not in self._ok_rows:
                pending.append(path)
            elif not self.is_done(path, regular_file_sha256(path)):
                logger.warning("%s changed since it was scored; scoring it again", display_path(path))
                changed_keys.add(key)
                pending.append(path)
        if changed_keys:
            self.changed = len(changed_keys)
            kept = [row for key, row in self._ok_rows.items() if key not in changed_keys]
            self._file.close()
            self._rewrite(kept)
            self._file = self._open_for_append()
            self._ok_rows = {_key(row[0]): row for row in kept}
        return pending

    def write(self, record: ScoreRecord) -> None:
        """Append and sync the row for ``record``."""
        row = _format_row(
            (
                _absolute(record.path),
                record.status.value,
                "" if record.probability is None else repr(record.probability),
                record.label or "",
                repr(record.threshold),
                record.error or "",
                self.model_sha256,
                __version__,
                record.input_sha256 or "",
                self.preprocessing,
            )
        )
        self._file.append(row.encode(_ENCODING, errors=_ERRORS))

    @property
    def rows_written(self) -> int:
        return self._file.records_written

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvResults:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _parse_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _absolute(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _key(path: str) -> str:
    """Return the name a file is matched by on resume: its folder with links resolved, then its own name.

    A file reached through a linked folder matches its row from a run through
    the real folder. A link to a file keeps its own name, because each name an
    archive lists gets its own row.
    """
    folder, name = os.path.split(_absolute(path))
    return os.path.join(os.path.realpath(folder), name)


def reject_non_regular(path: Path, option: str) -> None:
    """Raise UsageError unless ``path``, which exists, is a regular file (or a link to one).

    Reading a device such as ``/dev/zero`` to resume it would never end, and a
    FIFO would block until a writer appears.
    """
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise UsageError(f"{option} {path}: cannot read its status ({error.strerror}); pass a file path") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{option} {path} is a folder; pass a file path")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{option} {path} is not a regular file (a device, FIFO or socket); pass a file path")


class AuditLog:
    """An append-only JSON-lines log: when each input was scored, by which model, with what result.

    A record names the input by its SHA-256, not its path, because clinics often
    put patient names in file names.
    """

    def __init__(self, path: str | os.PathLike, *, model_sha256: str):
        self.path = Path(path)
        self.model_sha256 = model_sha256
        if self.path.exists():
            reject_non_regular(self.path, "--audit-log")
        _drop_partial_line(self.path)
        self._file = AppendOnlyFile(self.path)

    def write(self, record: ScoreRecord) -> None:
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "input_sha256": record.input_sha256,
            "model_sha256": self.model_sha256,
            "result": {
                "status": record.status.value,
                "probability": record.probability,
                "label": record.label,
                "threshold": record.threshold,
                "error": None if record.error is None else _without_path(record),
            },
            "edgefrac_version": __version__,
        }
        self._file.append((json.dumps(entry, sort_keys=True) + "\n").encode(_ENCODING))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _without_path(record: ScoreRecord) -> str:
    """Return the error reason with the file's path removed, keeping the log free of file names."""
    reason = record.error or ""
    return reason.replace(record.path, "<input>")


def _drop_partial_line(path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputWriteError(f"cannot read {path} before appending to it: {error.strerror}") from None
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s ends with an incomplete line (left by an interrupted run); removing it", path)
        _truncate(path, end)


def json_document(
    records: list[ScoreRecord],
    *,
    model_path: str,
    model_sha256: str,
    model_name: str,
    runtime: str,
    summary: dict,
) -> dict:
    """Build the ``--json`` output of ``edgefrac infer``: model, version, one entry per file, counts."""
    return {
        "edgefrac_version": __version__,
        "model": {"path": utf8_path(model_path), "sha256": model_sha256, "name": model_name},
        "runtime": runtime,
        "results": [
            {
                "path": utf8_path(record.path),
                "status": record.status.value,
                "probability": record.probability,
                "label": record.label,
                "threshold": record.threshold,
                "error": None if record.error is None else utf8_path(record.error),
            }
            for record in records
        ],
        "summary": summary,
    }
