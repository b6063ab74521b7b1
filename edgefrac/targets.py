"""Expand the TARGET arguments of ``edgefrac infer`` into a list of files to score.

A target is a file, a folder (searched recursively for image and DICOM files)
or a glob pattern. Patterns are expanded here, so a quoted pattern works the
same as one the shell expanded, and ``**`` matches any depth.
"""

from __future__ import annotations

import dataclasses
import fnmatch
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
        _report_unlistable(error, unlistable)

    for directory, subfolders, names in os.walk(folder, onerror=report, followlinks=False):
        subfolders.sort()
        for name in sorted(names):
            suffix = os.path.splitext(name)[1].lower()
            path = Path(directory, name)
            if suffix in SCORED_SUFFIXES:
                yield path
            elif _may_be_unnamed_dicom(suffix) and _is_regular_dicom(path):
                yield path


def _report_unlistable(error: OSError, unlistable: list[UnlistableFolder] | None) -> None:
    reason = error.strerror or type(error).__name__
    logger.warning("cannot list folder %s (%s); its files are left out", display_path(error.filename), reason)
    if unlistable is not None:
        unlistable.append(UnlistableFolder(Path(error.filename), reason))


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
    are logged and, when ``unlistable`` is given, appended to it once each.
    That covers folders under a folder target and folders that a pattern's
    wildcards search.

    Raises:
        UsageError: a target does not exist, a pattern matches nothing and
            reaches no folder that cannot be listed, or no target is a folder,
            no file to score was found and every folder could be listed.
    """
    files: list[Path] = []
    seen: set[str] = set()
    failures: list[UnlistableFolder] = []
    targets = list(targets)
    for target in targets:
        for path in _expand_one(target, failures):
            key = os.path.normpath(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                files.append(path)
    if unlistable is not None:
        unlistable.extend(_unique_folders(failures))
    if not files and not failures and not any(_is_dir(Path(target)) for target in targets):
        raise UsageError(
            "no image or DICOM files found in the given targets; expected files with one of the suffixes "
            + ", ".join(sorted(SCORED_SUFFIXES))
        )
    return files


def _unique_folders(folders: list[UnlistableFolder]) -> list[UnlistableFolder]:
    """Keep the first report of each folder, because a pattern and a folder it matches may both reach it."""
    unique: dict[str, UnlistableFolder] = {}
    for folder in folders:
        unique.setdefault(os.path.normpath(os.path.abspath(folder.path)), folder)
    return list(unique.values())


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def _expand_one(target: str, unlistable: list[UnlistableFolder]) -> list[Path]:
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
        failures_before = len(unlistable)
        found = list(walk_folder(path, unlistable))
        if not found and len(unlistable) == failures_before:
            logger.warning("folder %s contains no image or DICOM files", display_path(path))
        return found
    if (mode is not None and stat.S_ISREG(mode)) or os.path.islink(path):
        return [path]
    if is_pattern(target):
        return _expand_pattern(target, unlistable)
    raise UsageError(f"target {target!r} not found; pass an image file, a folder or a glob pattern")


def _expand_pattern(pattern: str, unlistable: list[UnlistableFolder]) -> list[Path]:
    matches = sorted(glob.glob(pattern, recursive=True))
    failures_before = len(unlistable)
    _find_unlistable_pattern_folders(pattern, unlistable)
    if not matches and len(unlistable) == failures_before:
        raise UsageError(f"pattern {pattern!r} matches no files; check the pattern and the current folder")
    found = []
    for match in matches:
        match_path = Path(match)
        if _is_dir(match_path):
            found.extend(walk_folder(match_path, unlistable))
        elif match_path.suffix.lower() in SCORED_SUFFIXES:
            found.append(match_path)
    return found


def _find_unlistable_pattern_folders(pattern: str, unlistable: list[UnlistableFolder]) -> None:
    """Report the folders that ``glob.glob(pattern, recursive=True)`` tries to list and cannot.

    glob leaves such a folder out without an error, so this pass lists the
    same folders by glob's rules. A wildcard part skips names that start with
    a dot unless the part itself does. ``**`` descends into every folder, and
    every link to a folder, whose name does not start with a dot. Each real
    folder is descended into once, so a link loop ends the descent.
    """
    head, parts = _split_pattern(pattern)
    lister = _FolderLister(unlistable)
    folders = [head]
    for part in parts:
        if not is_pattern(part):
            folders = [os.path.join(folder, part) for folder in folders]
        elif part == "**":
            folders = lister.descend(folders)
        else:
            folders = [
                os.path.join(folder, name)
                for folder in folders
                for name in lister.subfolders(folder)
                if _glob_part_matches(name, part)
            ]
        folders = list(dict.fromkeys(folders))


def _split_pattern(pattern: str) -> tuple[str, list[str]]:
    """Split ``pattern`` into the folder before its first wildcard part, and the parts from there on."""
    parts = pattern.split(os.sep)
    first_wildcard = next((index for index, part in enumerate(parts) if is_pattern(part)), len(parts))
    head = os.sep.join(parts[:first_wildcard])
    if not head and pattern.startswith(os.sep):
        head = os.sep
    return head, [part for part in parts[first_wildcard:] if part]


def _glob_part_matches(name: str, part: str) -> bool:
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatch(name, part)


class _FolderLister:
    """Lists folders for ``_find_unlistable_pattern_folders``, each path once, and reports the failures."""

    def __init__(self, unlistable: list[UnlistableFolder]) -> None:
        self._unlistable = unlistable
        self._subfolders: dict[str, list[str]] = {}

    def subfolders(self, folder: str) -> list[str]:
        """Return the sorted names of the folders and links to folders in ``folder`` ('' is the current folder).

        A folder that cannot be listed gives an empty list and is reported. A
        missing path or a file gives an empty list without a report, because
        glob tries to list those too when a part without wildcards follows one
        with them.
        """
        if folder not in self._subfolders:
            self._subfolders[folder] = self._list(folder)
        return self._subfolders[folder]

    def descend(self, starts: list[str]) -> list[str]:
        """Return ``starts`` and the folders below them that ``**`` reaches, in depth-first sorted order."""
        reached: list[str] = []
        visited: set = set()
        stack = list(reversed(starts))
        while stack:
            folder = stack.pop()
            identity = _folder_identity(folder)
            if identity in visited:
                continue
            visited.add(identity)
            reached.append(folder)
            names = [name for name in self.subfolders(folder) if not name.startswith(".")]
            stack.extend(os.path.join(folder, name) for name in reversed(names))
        return reached

    def _list(self, folder: str) -> list[str]:
        try:
            with os.scandir(folder or os.curdir) as entries:
                return sorted(entry.name for entry in entries if _is_folder_entry(entry))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as error:
            if error.filename is None:
                error.filename = folder or os.curdir
            _report_unlistable(error, self._unlistable)
            return []


def _is_folder_entry(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _folder_identity(folder: str) -> tuple[int, int] | str:
    """Return the device and inode of ``folder``, or its path when it cannot be stat'ed."""
    try:
        status = os.stat(folder or os.curdir)
    except OSError:
        return folder
    return (status.st_dev, status.st_ino)
