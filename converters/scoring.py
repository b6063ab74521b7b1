"""Score images with a Keras model in the views its training record names, as the device scores them.

A training record may name a test-time augmentation (``edgefrac.tta``). The
threshold, the drift measurement and evaluation then use the mean logit over
the views, exactly as the runtime does with the converted model, so every
comparison between the two models uses the same views.
"""

from __future__ import annotations

import numpy as np

from edgefrac.errors import UsageError
from edgefrac.tta import TestTimeAugmentation, combine_probabilities, views


def record_augmentation(record: dict | None, source: str = "training record") -> TestTimeAugmentation:
    """Return the test-time augmentation a training record names ('none' when it names none).

    Raises:
        UsageError: the record names an unknown one.
    """
    value = (record or {}).get("test_time_augmentation", TestTimeAugmentation.NONE.value)
    try:
        return TestTimeAugmentation.parse(value)
    except ValueError as error:
        raise UsageError(f"{source}: {error}; train the model again or correct the record") from None


def keras_probabilities(
    model, inputs: np.ndarray, augmentation: TestTimeAugmentation, batch_size: int = 32
) -> np.ndarray:
    """Return one fracture probability per scaled ``(N, H, W, C)`` input, combined over the views."""
    per_view = [
        model.predict(view, batch_size=batch_size, verbose=0).reshape(-1).astype(np.float64)
        for view in views(inputs, augmentation)
    ]
    return combine_probabilities(per_view)
