"""Labelled image folders: FracAtlas's layout or one subfolder per class.

This lives on the device side because ``edgefrac bench --data`` reads labels
and body regions too; it needs nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path

from edgefrac.errors import UsageError
from edgefrac.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, display_path

logger = logging.getLogger(__name__)

REGIONS = ("hand", "leg", "hip", "shoulder", "mixed")
UNKNOWN_REGION = "unknown"
_POSITIVE_NAMES = re.compile(r"^(fractured?|positive|abnormal|yes|1)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One labelled file, with the FracAtlas metadata where the dataset has it."""

    image_id: str
    path: Path
    label: int
    class_name: str
    region: str = UNKNOWN_REGION
    hardware: bool | None = None


def image_files(folder: Path) -> list[Path]:
    """List image and DICOM files under ``folder``, recursively, sorted by path.

    Every entry with an image or DICOM suffix that is not a directory is
    listed, including broken or looping symbolic links and unreadable files, so
    that the decoder reports each one instead of it vanishing from a run.
    Symbolic links to directories are not followed, which keeps a link loop
    from recursing forever. Subfolders that cannot be listed are logged and skipped.
    """
    suffixes = IMAGE_SUFFIXES | DICOM_SUFFIXES

    def log_unlistable(error: OSError) -> None:
        logger.warning("skipping folder %s: %s", display_path(error.filename), error.strerror)

    found = []
    for directory, _, file_names in os.walk(folder, onerror=log_unlistable, followlinks=False):
        found.extend(Path(directory, name) for name in file_names if Path(name).suffix.lower() in suffixes)
    return sorted(found)


def read_labelled_folder(root: str | Path, positive_class: str | None = None) -> list[LabelledImage]:
    """Read a labelled dataset: ``root/images/<class>/`` (FracAtlas) or ``root/<class>/``.

    Exactly two class folders are expected. The positive (fractured) class is
    ``positive_class`` or the folder named like ``Fractured``/``positive``.
    Body region and hardware come from ``root/dataset.csv`` when it exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"dataset folder {root} not found; pass the folder that contains the class subfolders")
    class_root = root / "images" if (root / "images").is_dir() else root
    classes = sorted(p.name for p in class_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) != 2:
        raise UsageError(
            f"{class_root} has class folders {classes}; expected exactly two (fractured and not fractured)"
        )
    positive = _positive_class(classes, positive_class, class_root)
    metadata = _read_fracatlas_csv(root / "dataset.csv")

    images = []
    for class_name in classes:
        for path in image_files(class_root / class_name):
            row = metadata.get(path.name, {})
            images.append(
                LabelledImage(
                    image_id=path.name,
                    path=path,
                    label=int(class_name == positive),
                    class_name=class_name,
                    region=_region(row),
                    hardware=(row.get("hardware") == "1") if row else None,
                )
            )
    if not images:
        raise UsageError(f"no image files found under {class_root}")
    _check_unique_ids(images)
    logger.info(
        "read %d images from %s (%d %s)", len(images), class_root, sum(i.label for i in images), positive
    )
    return images


def _positive_class(classes: list[str], requested: str | None, class_root: Path) -> str:
    if requested is not None:
        if requested not in classes:
            raise UsageError(f"positive class {requested!r} is not one of the folders {classes} in {class_root}")
        return requested
    matches = [name for name in classes if _POSITIVE_NAMES.match(name)]
    if len(matches) != 1:
        raise UsageError(
            f"cannot tell which of {classes} is the fractured class; pass --positive-class NAME"
        )
    return matches[0]


def _read_fracatlas_csv(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle) if "image_id" in row}


def _region(row: dict[str, str]) -> str:
    if not row:
        return UNKNOWN_REGION
    if row.get("mixed") == "1":
        return "mixed"
    named = [region for region in REGIONS if row.get(region) == "1"]
    return named[0] if len(named) == 1 else UNKNOWN_REGION


def _check_unique_ids(images: list[LabelledImage]) -> None:
    seen: dict[str, Path] = {}
    for image in images:
        if image.image_id in seen:
            raise UsageError(
                f"file name {image.image_id} appears twice ({seen[image.image_id]} and {image.path}); "
                "file names are image ids and must be unique"
            )
        seen[image.image_id] = image.path


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
