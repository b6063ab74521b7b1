"""The split file: which image of a labelled folder belongs to train, validation or test.

Reading it needs only the standard library, so the device side (``edgefrac
evaluate`` of a model file) can use a split written on the dev machine.
``converters.split`` makes the split.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import unicodedata
from pathlib import Path, PurePosixPath

from edgefrac.dataset import file_sha256
from edgefrac.errors import OutputWriteError, UsageError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_FORMAT = "edgefrac-split/1"


@dataclasses.dataclass(frozen=True)
class SplitEntry:
    """One image of a split file."""

    image_id: str
    relative_path: str
    label: int
    region: str
    hardware: bool | None
    sha256: str
    decodes_fully: bool
    split: str


@dataclasses.dataclass(frozen=True)
class Split:
    """A dataset split as stored on disk, with the root its paths are relative to."""

    root: Path
    seed: int
    fractions: tuple[float, float, float]
    entries: tuple[SplitEntry, ...]

    def subset(self, name: str, *, decodable_only: bool = False) -> list[SplitEntry]:
        if name not in SPLITS:
            raise UsageError(f"invalid split {name!r}: expected one of {', '.join(SPLITS)}")
        return [e for e in self.entries if e.split == name and (e.decodes_fully or not decodable_only)]

    def path_of(self, entry: SplitEntry) -> Path:
        """Return the file of ``entry`` under the root, found in either Unicode normal form of its name.

        See ``find_in_normal_forms``.
        """
        return find_in_normal_forms(self.root, entry.relative_path)

    def missing(self, entries: list[SplitEntry]) -> list[SplitEntry]:
        """Return the entries whose file does not exist under the root (or cannot be checked, as for a locked folder)."""
        return [entry for entry in entries if not os.path.exists(self.path_of(entry))]

    def ids_hash(self, entries: list[SplitEntry]) -> str:
        return ids_sha256(e.image_id for e in entries)


def find_in_normal_forms(root: Path, relative_path: str) -> Path:
    """Return ``root / relative_path``, or the existing path whose parts differ only in Unicode normal form.

    Linux stores a file name as the bytes it was given, so "é" written as one
    code point (NFC) and as "e" plus a combining accent (NFD) are two names.
    Files copied from macOS often carry NFD names, because HFS+ stores names
    decomposed (a variant of NFD), while a split written on Linux usually
    records NFC. When the exact path does not exist, each part
    is looked up as written, then in NFC, then in NFD. When no form exists, the
    exact path is returned, so the error that follows names the split file's name.
    """
    exact = root / relative_path
    if os.path.lexists(exact):
        return exact
    found = root
    for part in PurePosixPath(relative_path).parts:
        match = _existing_normal_form(found, part)
        if match is None:
            return exact
        found = match
    return found


def _existing_normal_form(folder: Path, name: str) -> Path | None:
    for form in dict.fromkeys((name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name))):
        candidate = folder / form
        if os.path.lexists(candidate):
            return candidate
    return None


def ids_sha256(image_ids) -> str:
    """Hash a set of image ids (order-independent) for provenance records."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode("utf-8")).hexdigest()


def write_split(split: Split, path: str | Path) -> None:
    """Write ``split`` as JSON; paths are stored relative to the dataset root."""
    counts = {
        name: {"images": len(split.subset(name)), "fractured": sum(e.label for e in split.subset(name))}
        for name in SPLITS
    }
    document = {
        "format": SPLIT_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "root": str(split.root),
        "seed": split.seed,
        "fractions": list(split.fractions),
        "counts": counts,
        "entries": [dataclasses.asdict(e) for e in split.entries],
    }
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    except OSError as error:
        raise OutputWriteError(
            f"cannot write split file {path} ({error.strerror or error}); pass an --output in a writable folder"
        ) from None


def read_split(path: str | Path, root: str | Path | None = None) -> Split:
    """Read a split file; ``root`` overrides the dataset folder recorded in it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"split file {path} not found; create it with `edgefrac split DATA --output {path}`") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"split file {path} is not valid JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != SPLIT_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise UsageError(f"{path} is not an edgefrac split file (format {found!r})")
    _check_document_keys(path, document)
    entries = tuple(_parse_entry(path, index, entry) for index, entry in enumerate(document["entries"]))
    _check_duplicates_in_one_split(path, entries)
    try:
        seed = int(document["seed"])
        fractions = tuple(float(value) for value in document["fractions"])
    except (TypeError, ValueError):
        raise _invalid(path, "'seed' must be an integer and 'fractions' a list of numbers") from None
    return Split(
        root=Path(root).resolve() if root else Path(document["root"]),
        seed=seed,
        fractions=fractions,
        entries=entries,
    )


_REQUIRED_KEYS = {"format", "root", "seed", "fractions", "entries"}
_OPTIONAL_KEYS = {"created", "counts"}
_ENTRY_FIELDS = {field.name for field in dataclasses.fields(SplitEntry)}
_FIX = "write it again with `edgefrac split DATA --output FILE` instead of editing it by hand"


def _invalid(path: Path, problem: str) -> UsageError:
    return UsageError(f"split file {path} is invalid: {problem}; {_FIX}")


def _check_document_keys(path: Path, document: dict) -> None:
    missing = sorted(_REQUIRED_KEYS - document.keys())
    unknown = sorted(document.keys() - _REQUIRED_KEYS - _OPTIONAL_KEYS)
    if missing:
        raise _invalid(path, f"missing key(s) {', '.join(missing)}")
    if unknown:
        raise _invalid(path, f"unknown key(s) {', '.join(unknown)}")
    if not isinstance(document["entries"], list):
        raise _invalid(path, "'entries' must be a list")


def _parse_entry(path: Path, index: int, entry) -> SplitEntry:
    """Check one entry's keys, types and split name, and build the SplitEntry."""
    if not isinstance(entry, dict):
        raise _invalid(path, f"entry {index} is a {type(entry).__name__}, not an object")
    name = entry.get("image_id", f"number {index}")
    missing = sorted(_ENTRY_FIELDS - entry.keys())
    unknown = sorted(entry.keys() - _ENTRY_FIELDS)
    if missing:
        raise _invalid(path, f"entry {name!r} lacks key(s) {', '.join(missing)}")
    if unknown:
        raise _invalid(path, f"entry {name!r} has unknown key(s) {', '.join(unknown)}")
    if entry["split"] not in SPLITS:
        raise _invalid(path, f"entry {name!r} has split {entry['split']!r}, expected one of {', '.join(SPLITS)}")
    if entry["label"] not in (0, 1) or isinstance(entry["label"], bool):
        raise _invalid(path, f"entry {name!r} has label {entry['label']!r}, expected 0 or 1")
    for key in ("image_id", "relative_path", "region", "sha256"):
        if not isinstance(entry[key], str):
            raise _invalid(path, f"entry {name!r} has {key} {entry[key]!r}, expected a string")
    if not isinstance(entry["decodes_fully"], bool) or entry["hardware"] not in (True, False, None):
        raise _invalid(path, f"entry {name!r} needs true/false for decodes_fully and true/false/null for hardware")
    relative = PurePosixPath(entry["relative_path"])
    if not entry["relative_path"] or relative.is_absolute() or ".." in relative.parts:
        raise _invalid(
            path, f"entry {name!r} has relative_path {entry['relative_path']!r}, expected a path inside the data folder"
        )
    return SplitEntry(**entry)


def _check_duplicates_in_one_split(path: Path, entries: tuple[SplitEntry, ...]) -> None:
    """Reject byte-identical files (same SHA-256) placed in different splits, which leaks images."""
    placed: dict[str, SplitEntry] = {}
    for entry in entries:
        if not entry.sha256:
            continue
        first = placed.setdefault(entry.sha256, entry)
        if first.split != entry.split:
            raise _invalid(
                path,
                f"byte-identical images {first.image_id!r} ({first.split}) and {entry.image_id!r} ({entry.split}) "
                "are in different splits, so one split would contain a copy of another's image",
            )


def check_training_record(split_path: str | Path, split: Split, record: dict, model_path: str | Path) -> None:
    """Compare a split file with the one a model's training record names.

    Logs a warning when the file's SHA-256 differs from the record's
    ``split_file_sha256``, or when the record has no training ids to compare.
    Raises UsageError when the training ids differ from
    the record's ``split_ids_sha256["train"]``, because then the validation or
    test split may contain images the model was trained on.
    """
    split_path = Path(split_path)
    recorded_file = record.get("split_file_sha256")
    if recorded_file and file_sha256(split_path) != recorded_file:
        logger.warning(
            "split file %s differs from the one %s was trained with (sha256 %s...)",
            split_path, model_path, recorded_file[:12],
        )
    recorded_train = (record.get("split_ids_sha256") or {}).get("train")
    if not recorded_train:
        logger.warning(
            "%s records no hash of its training images, so it cannot be checked that the validation and test "
            "images of %s were not used to train it; evaluate only on the split the model was trained with",
            model_path, split_path,
        )
    elif split.ids_hash(split.subset("train")) != recorded_train:
        raise UsageError(
            f"the training images of split file {split_path} differ from those {model_path} was trained on "
            f"(train ids sha256 {recorded_train[:12]}... recorded with the model), so its validation and test "
            "images may include training images; pass the --split-file the model was trained with"
        )
