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
from pathlib import Path

from edgefrac.errors import UsageError

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
        return self.root / entry.relative_path

    def ids_hash(self, entries: list[SplitEntry]) -> str:
        return ids_sha256(e.image_id for e in entries)


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
