"""Import TensorFlow and Keras once, with a pip hint when the extra is missing."""

from edgefrac.errors import MissingDependencyError

try:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import keras
except ImportError as error:  # pragma: no cover - depends on the install
    raise MissingDependencyError(
        f"TensorFlow is not installed ({error}); install the dev-machine extra: pip install 'edgefrac[convert]'"
    ) from error

__all__ = ["tf", "keras"]
