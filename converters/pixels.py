"""Decode the images of a split into arrays, through the device runtime's decoder."""

from __future__ import annotations

import logging

import numpy as np

from converters.split import Split, SplitEntry
from edgefrac.errors import InputError
from edgefrac.images import load_pixels
from edgefrac.preprocessing import PreprocessConfig

logger = logging.getLogger(__name__)


def load_entries(
    split: Split, entries: list[SplitEntry], config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray, list[SplitEntry]]:
    """Decode ``entries`` to uint8 RGB pixels of ``config``'s size.

    Returns the pixels ``(N, H, W, 3)``, the labels ``(N,)`` and the entries
    that decoded. Files that fail to decode (truncated ones among them) are
    left out and counted in the log.
    """
    pixels = np.empty((len(entries), config.height, config.width, 3), dtype=np.uint8)
    kept: list[SplitEntry] = []
    skipped: dict[str, int] = {}
    for entry in entries:
        try:
            pixels[len(kept)] = load_pixels(split.path_of(entry), config.size, config.resize)
        except InputError as error:
            skipped[type(error).__name__] = skipped.get(type(error).__name__, 0) + 1
            logger.debug("left out %s: %s", entry.image_id, error)
            continue
        kept.append(entry)
    if skipped:
        logger.info("left out %d of %d images that did not decode: %s", sum(skipped.values()), len(entries), skipped)
    labels = np.array([e.label for e in kept], dtype=np.int64)
    return pixels[: len(kept)], labels, kept
