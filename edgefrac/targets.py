"""Expand the TARGET arguments of ``edgefrac infer`` into a list of files to score.

A target is a file, a folder (searched recursively for image and DICOM files)
or a glob pattern. Patterns are expanded here, so a quoted pattern works the
same as one the shell expanded, and ``**`` matches any depth.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgefrac.errors import UsageError
from edgefrac.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, display_path, is_dicom

logger = logging.getLogger(__name__)

SCORED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
_GLOB_CHARACTERS = frozenset("*?[")


def is_pattern(target: str) -> bool:
    """Return whether ``target`` contains a glob wildcard (``*``, ``?`` or ``[``)."""
    return any(character in _GLOB_CHARACTERS for character in target)


@dataclasses.dataclass(frozen=True)
class UnlistableFolder:
    """A folder under a target that could not be listed, so none of its files were found."""

    path: Path
    reason: str


def walk_folder(folder: Path, unlistable: list[UnlistableFolder] | None = None) -> Iterator[Path]:
    """Yield the image and DICOM files under ``folder``, recursively, in sorted order.

    A file counts as DICOM by its suffix or, when its name has no suffix or an
    all-digit one (PACS and CD exports name files ``IM0`` or by their UID), by
    the ``DICM`` marker at byte 128. Only regular files are opened for that
    check, so a FIFO or device in the folder cannot block the walk, and an
    unreadable file is left out.

    Symbolic links to folders are not followed, so a link loop cannot make the
    walk endless. A link named like an image that leads nowhere (broken, or a
    loop) is still yielded: scoring it fails with a reason, so the run has a row
    for every name that looks like an input. A folder named like an image is
    searched like any other folder. A folder that cannot be listed is logged
    and, when ``unlistable`` is given, appended to it.
    """

    def report(error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        logger.warning("cannot list folder %s (%s); its files are left out", display_path(error.filename), reason)
        if unlistable is not None:
            unlistable.append(UnlistableFolder(Path(error.filename), reason))

    for directory, subfolders, names in os.walk(folder, onerror=report, followlinks=False):
        subfolders.sort()
        for name in sorted(names):
            suffix = os.path.splitext(name)[1].lower()
            path = Path(directory, name)
            if suffix in SCORED_SUFFIXES:
                yield path
            elif _may_be_unnamed_dicom(suffix) and _is_regular_dicom(path):
                yield path


def _may_be_unnamed_dicom(suffix: str) -> bool:
    return suffix == "" or suffix[1:].isdigit()


def _is_regular_dicom(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return is_dicom(path)


def expand_targets(targets: Iterable[str], unlistable: list[UnlistableFolder] | None = None) -> list[Path]:
    """Return the files named by ``targets``, each once, in the order given.

    A file named explicitly is kept whatever its suffix, because the user chose
    it. Folders and patterns contribute only files with an image or DICOM
    suffix (see ``edgefrac.images``). An existing folder without such files is
    not an error, because a watched inbox is often empty: the result may then
    be an empty list, and a warning is logged. Folders that cannot be listed
    are appended to ``unlistable`` when it is given.

    Raises:
        UsageError: a target does not exist, a pattern matches nothing, or no
            target is a folder and no file to score was found.
    """
    files: list[Path] = []
    seen: set[str] = set()
    targets = list(targets)
    for target in targets:
        for path in _expand_one(target, unlistable):
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                files.append(path)
    if not files and not any(_is_dir(Path(target)) for target in targets):
        raise UsageError(
            "no image or DICOM files found in the given targets; expected files with one of the suffixes "
            + ", ".join(sorted(SCORED_SUFFIXES))
        )
    return files


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _expand_one(target: str, unlistable: list[UnlistableFolder] | None) -> list[Path]:
    path = Path(target)
    try:
        mode = os.stat(path).st_mode
    except PermissionError:
        # A file inside a folder this user cannot enter: scoring it gives a row with the reason.
        mode = None
        if not is_pattern(target):
            return [path]
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        failures: list[UnlistableFolder] = []
        found = list(walk_folder(path, failures))
        if unlistable is not None:
            unlistable.extend(failures)
        if not found and not failures:
            logger.warning("folder %s contains no image or DICOM files", display_path(path))
        return found
    if (mode is not None and stat.S_ISREG(mode)) or os.path.islink(path):
        return [path]
    if is_pattern(target):
        # NOTE: glob skips a folder it cannot list and reports no error, so 'scans/**/*.jpg' leaves out an
        # unreadable subfolder silently. Passing the folder itself gives that subfolder an error row.
        matches = sorted(glob.glob(target, recursive=True))
        if not matches:
            raise UsageError(f"pattern {target!r} matches no files; check the pattern and the current folder")
        found = []
        for match in matches:
            match_path = Path(match)
            if _is_dir(match_path):
                found.extend(walk_folder(match_path, unlistable))
            elif match_path.suffix.lower() in SCORED_SUFFIXES:
                found.append(match_path)
        return found
    raise UsageError(f"target {target!r} not found; pass an image file, a folder or a glob pattern")
