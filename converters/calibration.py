"""The representative dataset for int8 calibration: real training images, stratified.

Images are decoded and scaled by the same code the device runs
(``edgefrac.images`` and ``edgefrac.preprocessing``), so the activation ranges
the converter measures are the ranges the device will see.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path

import numpy as np

from converters.split import Split, SplitEntry, ids_sha256
from edgefrac.errors import InputError, TruncatedImageError, UsageError
from edgefrac.images import load_input
from edgefrac.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SIZE = 300


@dataclasses.dataclass(frozen=True)
class RepresentativeDataset:
    """Preprocessed float32 calibration inputs and the ids of the images they came from."""

    inputs: np.ndarray
    image_ids: tuple[str, ...]

    @property
    def ids_sha256(self) -> str:
        return ids_sha256(self.image_ids)

    def __len__(self) -> int:
        return len(self.image_ids)


def stratified_sample(entries: list[SplitEntry], size: int, seed: int) -> list[SplitEntry]:
    """Pick ``size`` entries with each (label, region) stratum represented in proportion."""
    if size <= 0:
        raise UsageError(f"invalid calibration size {size}: expected 1 or more images")
    if size >= len(entries):
        return list(entries)
    strata: dict[tuple[int, str], list[SplitEntry]] = collections.defaultdict(list)
    for entry in entries:
        strata[(entry.label, entry.region)].append(entry)
    rng = np.random.default_rng(seed)
    keys = sorted(strata)
    # Largest-remainder apportionment of the sample over the strata.
    exact = np.array([size * len(strata[k]) / len(entries) for k in keys])
    counts = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - counts), kind="stable")[: size - counts.sum()]:
        counts[index] += 1
    chosen: list[SplitEntry] = []
    for key, count in zip(keys, counts):
        members = strata[key]
        picks = rng.choice(len(members), size=min(count, len(members)), replace=False)
        chosen.extend(members[i] for i in sorted(picks))
    return sorted(chosen, key=lambda e: e.image_id)


def from_split(split: Split, config: PreprocessConfig, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> RepresentativeDataset:
    """Draw the representative dataset from the decodable training images of ``split``."""
    available = split.subset("train", decodable_only=True)
    marked = len(split.subset("train")) - len(available)
    if marked:
        logger.info("training split: left out %d images that the split file marks as truncated or not decodable", marked)
    _log_size_cap(size, len(available), "decodable training images")
    entries = stratified_sample(available, size, seed)
    hint = "check that --calibration points at the dataset folder the split file was made from"
    return _load(entries, [split.path_of(e) for e in entries], config, hint)


def from_folder(folder: str | Path, config: PreprocessConfig, size: int = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> RepresentativeDataset:
    """Draw the representative dataset from every image under ``folder`` (no split file given)."""
    from edgefrac.dataset import image_files

    files = image_files(Path(folder))
    if not files:
        raise UsageError(f"no images found under calibration folder {folder}")
    _log_size_cap(size, len(files), f"image files under {folder}")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(files), size=min(size, len(files)), replace=False))
    chosen = [files[i] for i in picks]
    entries = [
        SplitEntry(image_id=p.name, relative_path=str(p), label=-1, region="unknown", hardware=None,
                   sha256="", decodes_fully=True, split="train")
        for p in chosen
    ]
    return _load(entries, chosen, config, f"check that --calibration {folder} contains decodable images")


def describe_failure(error: InputError) -> str:
    """Return the error message, without the hint about an --allow-truncated option that convert lacks."""
    if isinstance(error, TruncatedImageError):
        return f"{str(error).split(';')[0]}; re-export the file or leave it out"
    return str(error)


def _log_size_cap(size: int, available: int, source: str) -> None:
    """Log a warning when the requested size exceeds the ``available`` images described by ``source``."""
    if size > available:
        logger.warning("--calibration-size %d exceeds the %d %s; using %d", size, available, source, available)


def _load(entries: list[SplitEntry], paths: list[Path], config: PreprocessConfig, hint: str) -> RepresentativeDataset:
    inputs = []
    ids = []
    truncated = 0
    failures = []
    for entry, path in zip(entries, paths):
        try:
            inputs.append(load_input(path, config))
        except TruncatedImageError:
            truncated += 1
            continue
        except InputError as error:
            failures.append((entry.image_id, error))
            continue
        ids.append(entry.image_id)
    if truncated:
        logger.warning("representative dataset: %d truncated images left out", truncated)
    for image_id, error in failures:
        logger.debug("calibration image %s left out: %s", image_id, error)
    if failures:
        logger.warning(
            "representative dataset: %d of %d images could not be loaded and are left out (first: %s), "
            "run with -vv to list them",
            len(failures), len(entries), describe_failure(failures[0][1]),
        )
    if not inputs:
        raise UsageError(f"no calibration image could be decoded; {hint}")
    logger.info("representative dataset: %d images at %dx%d", len(ids), config.width, config.height)
    return RepresentativeDataset(inputs=np.stack(inputs).astype(np.float32), image_ids=tuple(ids))
