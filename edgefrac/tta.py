"""Test-time augmentation: score an image in more than one view and average the logits.

A model card (or a training record) names its test-time augmentation. With
``horizontal_flip`` the model scores the model input (the image after resizing
and scaling) and that input mirrored left to right, and the decision uses the
mean of the two logits. Because the mirror is taken after resizing, an image
and its mirrored copy can score slightly differently when the resize filter
treats the left and right edges differently. Both views pass through the
same int8 model, so rounding errors that differ between the two partly cancel.
The Keras reference and its threshold use the same views, so agreement between
the two models compares like with like. A model file of this kind costs two
invocations per image.

The mirror image is a plausible radiograph: training augments with horizontal
flips, and left and right limbs look alike.
"""

from __future__ import annotations

import enum
import json

import numpy as np

from edgefrac.drift import logit


class TestTimeAugmentation(str, enum.Enum):
    """The set of views of an image that a model scores before its logits are averaged."""

    NONE = "none"
    HORIZONTAL_FLIP = "horizontal_flip"

    @classmethod
    def parse(cls, value) -> TestTimeAugmentation:
        """Return the member named ``value``; a ValueError lists the valid names."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(repr(member.value) for member in cls)
            raise ValueError(f"test-time augmentation {_shown(value)} is unknown; expected one of {names}") from None

    @property
    def view_count(self) -> int:
        return 2 if self is TestTimeAugmentation.HORIZONTAL_FLIP else 1


def _shown(value) -> str:
    """Show ``value`` as its JSON text (``null``, ``true``), where cards and records hold it; text keeps quotes."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def views(images: np.ndarray, augmentation: TestTimeAugmentation) -> list[np.ndarray]:
    """Return the views of ``images``, shaped ``(H, W, C)`` or ``(N, H, W, C)``, that the model scores.

    The mirror view reverses the width axis, the second to last.
    """
    if augmentation is TestTimeAugmentation.HORIZONTAL_FLIP:
        return [images, np.ascontiguousarray(images[..., ::-1, :])]
    return [images]


def sigmoid(values) -> np.ndarray:
    """Return the logistic function of ``values``, stable for large magnitudes."""
    values = np.asarray(values, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -values))


def combine_probabilities(per_view: list[np.ndarray]) -> np.ndarray:
    """Average the views' probabilities in logit space (probabilities of 0 and 1 clipped first) and return the result.

    One view comes back unchanged, so a model without test-time augmentation
    keeps its exact outputs.
    """
    if len(per_view) == 1:
        return np.asarray(per_view[0], dtype=np.float64)
    return sigmoid(np.mean([logit(values) for values in per_view], axis=0))
