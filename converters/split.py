"""Train/validation/test split by image, stratified, with duplicates kept together.

Byte-identical files (same SHA-256) form one group that goes to a single split,
so a copy of a test image can never be trained on. Groups are stratified by
label and body region: within each stratum, every split gets its share to
within one group. The split is written to a JSON file that every later command
(train, convert, evaluate) reads, so evaluation never touches a training image.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from edgefrac.dataset import LabelledImage, file_sha256, read_labelled_folder
from edgefrac.errors import TruncatedImageError, UsageError
from edgefrac.images import load_pixels

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
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
        return self.root / entry.relative_path

    def ids_hash(self, entries: list[SplitEntry]) -> str:
        return ids_sha256(e.image_id for e in entries)


def ids_sha256(image_ids) -> str:
    """Hash a set of image ids (order-independent) for provenance records."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode("utf-8")).hexdigest()


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
    return Split(root=root, seed=seed, fractions=tuple(fractions), entries=entries)


def _check_group_labels(groups: dict[str, list[LabelledImage]]) -> None:
    for content_hash, group in groups.items():
        if len({image.label for image in group}) > 1:
            names = ", ".join(f"{i.image_id} ({i.class_name})" for i in group)
            raise UsageError(f"byte-identical files carry different labels: {names}; fix the labels first")


def _check_decoding(images: list[LabelledImage]) -> dict[str, bool]:
    """Decode each image once at a small size to find truncated files."""
    result = {}
    for image in images:
        try:
            load_pixels(image.path, (32, 32))
            result[image.image_id] = True
        except TruncatedImageError:
            result[image.image_id] = False
    truncated = sum(not ok for ok in result.values())
    if truncated:
        logger.warning("%d truncated images are marked and left out of training", truncated)
    return result


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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def read_split(path: str | Path, root: str | Path | None = None) -> Split:
    """Read a split file; ``root`` overrides the dataset folder recorded in it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"split file {path} not found; create it with `edgefrac split DATA --output {path}`") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"split file {path} is not valid JSON ({error})") from None
    if document.get("format") != SPLIT_FORMAT:
        raise UsageError(f"{path} is not an edgefrac split file (format {document.get('format')!r})")
    entries = tuple(SplitEntry(**entry) for entry in document["entries"])
    return Split(
        root=Path(root).resolve() if root else Path(document["root"]),
        seed=int(document["seed"]),
        fractions=tuple(document["fractions"]),
        entries=entries,
    )
