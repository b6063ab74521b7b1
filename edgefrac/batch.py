"""Score a list of files one by one and yield one result record per file.

A file that cannot be decoded gives an error record and the batch goes on. A
failure of the model or the interpreter stops the batch, because every later
file would fail the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgefrac.classifier import FractureClassifier
from edgefrac.dataset import file_sha256
from edgefrac.errors import InputError, OutputNotProbabilityError, RuntimeIncompatibleError, TruncatedImageError
from edgefrac.images import display_path, load_input

logger = logging.getLogger(__name__)


class Status(str, enum.Enum):
    """Outcome of one file."""

    OK = "ok"
    TRUNCATED = "truncated"
    """Scored with ``--allow-truncated``, with the missing part of the file grey."""
    ERROR = "error"

    @property
    def scored(self) -> bool:
        return self is not Status.ERROR


@dataclasses.dataclass(frozen=True)
class ScoreRecord:
    """The result for one file: a probability and label, or the reason it was not scored."""

    path: str
    status: Status
    threshold: float
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    input_sha256: str | None = None

    @property
    def fractured(self) -> bool:
        return self.status.scored and self.probability is not None and self.probability >= self.threshold


@dataclasses.dataclass
class Summary:
    """Counts for a finished or interrupted batch."""

    scored: int = 0
    fractured: int = 0
    failed: int = 0
    skipped: int = 0
    truncated: int = 0
    """Files among ``scored`` whose missing part was scored grey (``--allow-truncated``)."""

    def add(self, record: ScoreRecord) -> None:
        if record.status.scored:
            self.scored += 1
            self.fractured += int(record.fractured)
            self.truncated += int(record.status is Status.TRUNCATED)
        else:
            self.failed += 1


def one_line(error: BaseException) -> str:
    """Return the first non-empty line of an error message, or the error's class name."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def utf8_path(path: str | os.PathLike) -> str:
    """Return ``path`` as text that a UTF-8 file such as a JSON document can hold.

    Bytes of a non-UTF-8 file name become ``\\xNN`` escapes, so the text is
    readable but no longer opens the file. Control characters stay as they are:
    ``edgefrac.images.display_path`` escapes them too, for terminals and logs.
    """
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def score_file(classifier: FractureClassifier, path: Path, *, hash_input: bool = False) -> ScoreRecord:
    """Decode and score one file.

    Raises:
        RuntimeIncompatibleError: the interpreter failed to run the decoded
            input, which is a fault of the model or the runtime, not of the file.
    """
    threshold = classifier.threshold
    input_sha256 = regular_file_sha256(path) if hash_input else None
    try:
        model_input, truncated = _decode(classifier, path)
    except InputError as error:
        reason = _without_path_prefix(path, one_line(error))
        return ScoreRecord(str(path), Status.ERROR, threshold, error=reason, input_sha256=input_sha256)
    except (MemoryError, RecursionError):
        raise
    except Exception as error:  # noqa: BLE001 - a decoder bug on one file must not stop the batch
        logger.debug("unexpected error decoding %s", display_path(path), exc_info=True)
        reason = f"unexpected decoder error ({type(error).__name__}: {one_line(error)}); run with -vv for details"
        return ScoreRecord(str(path), Status.ERROR, threshold, error=reason, input_sha256=input_sha256)

    try:
        prediction = classifier.predict_input(model_input)
    except (ValueError, RuntimeError) as error:
        raise RuntimeIncompatibleError(
            f"{classifier.runtime.info.describe()} failed to run the model on {display_path(path)}: "
            f"{one_line(error)}"
        ) from None
    except OutputNotProbabilityError as error:
        return ScoreRecord(str(path), Status.ERROR, threshold, error=str(error), input_sha256=input_sha256)
    if not math.isfinite(prediction.probability):
        reason = f"the model output is {prediction.probability}, not a probability"
        return ScoreRecord(str(path), Status.ERROR, threshold, error=reason, input_sha256=input_sha256)

    class_names = classifier.card.class_names
    return ScoreRecord(
        str(path),
        Status.TRUNCATED if truncated else Status.OK,
        threshold,
        probability=prediction.probability,
        label=class_names[1] if prediction.fractured else class_names[0],
        input_sha256=input_sha256,
    )


def _decode(classifier: FractureClassifier, path: Path) -> tuple[np.ndarray, bool]:
    """Return the model input for ``path`` and whether the file is truncated.

    A truncated file is decoded again with its missing part grey only when the
    classifier allows truncated files; otherwise ``TruncatedImageError`` goes up.
    """
    try:
        return load_input(path, classifier.preprocessing, max_pixels=classifier.max_pixels), False
    except TruncatedImageError:
        if not classifier.allow_truncated:
            raise
    model_input = load_input(path, classifier.preprocessing, allow_truncated=True, max_pixels=classifier.max_pixels)
    return model_input, True


def score_files(
    classifier: FractureClassifier, paths: Iterable[Path], *, hash_inputs: bool = False
) -> Iterator[ScoreRecord]:
    """Yield one ``ScoreRecord`` per path, in order; see ``score_file`` for what stops the batch."""
    for path in paths:
        record = score_file(classifier, path, hash_input=hash_inputs)
        if record.status is Status.ERROR:
            logger.info("not scored: %s: %s", display_path(record.path), display_path(record.error or ""))
        yield record


def _without_path_prefix(path: Path, reason: str) -> str:
    """Drop the ``"<path>: "`` prefix that decoder messages start with, since every output has a path column."""
    prefix = f"{path}: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


def regular_file_sha256(path: Path) -> str | None:
    """Return the SHA-256 of ``path``, or None when it is not a regular file or cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            # Opening a FIFO for reading blocks until a writer appears, which would hang the batch.
            return None
        return file_sha256(path)
    except OSError as error:
        logger.debug("cannot hash %s: %s", display_path(path), error)
        return None
