"""Train/validation/test split by image, stratified, with duplicates kept together.

Byte-identical files (same SHA-256) form one group that goes to a single split,
so a copy of a test image can never be trained on. Groups are stratified by
label and body region: within each stratum, every split gets its share to
within one group. The split is written to a JSON file that every later command
(train, convert, evaluate) reads, so evaluation never touches a training image.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np

from edgefrac.dataset import LabelledImage, file_sha256, read_labelled_folder
from edgefrac.errors import InputError, TruncatedImageError, UsageError
from edgefrac.images import load_pixels
from edgefrac.splitfile import SPLITS, Split, SplitEntry, ids_sha256, read_split, write_split

__all__ = ["SPLITS", "Split", "SplitEntry", "ids_sha256", "make_split", "read_split", "write_split"]

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)

def make_split(
    root: str | Path,
    *,
    seed: int = 1234,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    positive_class: str | None = None,
) -> Split:
    """Split the labelled folder ``root``; see the module docstring for the rules."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UsageError(f"invalid split fractions {fractions}: expected three positive values summing to 1")
    root = Path(root).resolve()
    images = read_labelled_folder(root, positive_class)
    _check_both_classes(root, images)

    hashes = {image.image_id: file_sha256(image.path) for image in images}
    groups: dict[str, list[LabelledImage]] = collections.defaultdict(list)
    for image in images:
        groups[hashes[image.image_id]].append(image)
    _check_group_labels(groups)
    duplicates = sum(len(g) - 1 for g in groups.values())
    logger.info("%d images in %d content groups (%d byte-identical copies)", len(images), len(groups), duplicates)

    strata: dict[tuple[int, str], list[list[LabelledImage]]] = collections.defaultdict(list)
    for content_hash in sorted(groups):
        group = sorted(groups[content_hash], key=lambda i: i.image_id)
        strata[(group[0].label, group[0].region)].append(group)

    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for key in sorted(strata):
        stratum = strata[key]
        order = rng.permutation(len(stratum))
        counts = [0, 0, 0]
        total = sum(len(g) for g in stratum)
        for index in order:
            group = stratum[index]
            placed = sum(counts)
            # The split furthest below its share (after this group) takes the group.
            deficits = [fractions[s] * (placed + len(group)) - counts[s] for s in range(3)]
            chosen = int(np.argmax(deficits))
            counts[chosen] += len(group)
            for image in group:
                assignment[image.image_id] = SPLITS[chosen]
        logger.debug("stratum %s: %d images -> %s", key, total, counts)

    decodable = _check_decoding(images)
    entries = tuple(
        SplitEntry(
            image_id=image.image_id,
            relative_path=image.path.relative_to(root).as_posix(),
            label=image.label,
            region=image.region,
            hardware=image.hardware,
            sha256=hashes[image.image_id],
            decodes_fully=decodable[image.image_id],
            split=assignment[image.image_id],
        )
        for image in sorted(images, key=lambda i: i.image_id)
    )
    split = Split(root=root, seed=seed, fractions=tuple(fractions), entries=entries)
    _warn_about_small_splits(split)
    return split


def _check_both_classes(root: Path, images: list[LabelledImage]) -> None:
    """Reject a folder where the fractured or the non-fractured class has no image file."""
    for label, description in ((1, "fractured"), (0, "non-fractured")):
        if not any(image.label == label for image in images):
            raise UsageError(
                f"{root} has no {description} image (label {label}); add images to that class folder, "
                "because every split needs both classes"
            )


def _warn_about_small_splits(split: Split) -> None:
    """Warn about a split with no image or without one of the classes; train and convert need both."""
    for name in SPLITS:
        labels = {entry.label for entry in split.subset(name, decodable_only=True)}
        if not labels:
            logger.warning("the %s split has no decodable image; add images or change --fractions", name)
        elif len(labels) == 1:
            missing = "non-fractured" if 1 in labels else "fractured"
            logger.warning(
                "the %s split has no decodable %s image; add images or change --fractions", name, missing
            )


def _check_group_labels(groups: dict[str, list[LabelledImage]]) -> None:
    for content_hash, group in groups.items():
        if len({image.label for image in group}) > 1:
            names = ", ".join(f"{i.image_id} ({i.class_name})" for i in group)
            raise UsageError(f"byte-identical files carry different labels: {names}; fix the labels first")


def _check_decoding(images: list[LabelledImage]) -> dict[str, bool]:
    """Decode each image once at a small size to find truncated and undecodable files.

    Both kinds are marked ``decodes_fully=False``, so training and evaluation leave them out.
    """
    result = {}
    truncated = 0
    undecodable = 0
    for image in images:
        try:
            load_pixels(image.path, (32, 32))
            result[image.image_id] = True
        except TruncatedImageError:
            result[image.image_id] = False
            truncated += 1
        except InputError as error:
            result[image.image_id] = False
            undecodable += 1
            logger.debug("%s is marked as not decodable: %s", image.image_id, error)
    if truncated:
        logger.warning("%d truncated images are marked and left out of training", truncated)
    if undecodable:
        logger.warning(
            "%d files do not decode as images and are marked and left out of training and evaluation "
            "(run with -vv to list them, or remove them from the folder)",
            undecodable,
        )
    return result
