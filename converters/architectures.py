"""The two fracture classifiers: a small custom CNN and MobileNetV2.

Both end in a ``Dense(1)`` layer named ``logit`` followed by a sigmoid layer
named ``probability``. The converter can cut the model at ``logit`` so that an
int8 model's output has a useful resolution around the decision threshold.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from converters.tf import keras
from edgefrac.errors import UsageError
from edgefrac.preprocessing import PreprocessConfig, ResizeMethod, ValueScaling

logger = logging.getLogger(__name__)

LOGIT_LAYER = "logit"
PROBABILITY_LAYER = "probability"


class Architecture(str, enum.Enum):
    CUSTOM_CNN = "cnn"
    MOBILENET_V2 = "mobilenetv2"


def preprocess_config(architecture: Architecture, resolution: int | None = None) -> PreprocessConfig:
    """Return the input contract of ``architecture`` (its default resolution unless given)."""
    architecture = Architecture(architecture)
    if architecture is Architecture.CUSTOM_CNN:
        side = resolution or 128
        scaling = ValueScaling.UNIT
    else:
        side = resolution or 224
        scaling = ValueScaling.SYMMETRIC
    return PreprocessConfig(height=side, width=side, resize=ResizeMethod.BILINEAR, scaling=scaling)


def build_custom_cnn(resolution: int = 128) -> keras.Model:
    """Build the custom CNN: three conv blocks (32/64/128), then a 256-unit dense head."""
    inputs = keras.Input(shape=(resolution, resolution, 3), name="image")
    x = inputs
    for filters, dropout in ((32, 0.2), (64, 0.3), (128, 0.4)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs, probability, name="custom_cnn")


def build_mobilenet_v2(
    resolution: int = 224, *, alpha: float = 0.35, weights: str | Path | None = None
) -> tuple[keras.Model, keras.Model]:
    """Build MobileNetV2 with a 64-unit head; return the whole model and its backbone.

    ``weights`` is ``None`` (random), ``"imagenet"`` (downloaded by Keras) or
    the path of a no-top weight file for this ``alpha``. The backbone is called
    with ``training=False`` so its batch-norm statistics stay fixed while
    fine-tuning on a small dataset.
    """
    if weights is None or weights == "imagenet":
        backbone = keras.applications.MobileNetV2(
            input_shape=(resolution, resolution, 3), alpha=alpha, include_top=False, weights=weights
        )
    else:
        backbone = keras.applications.MobileNetV2(
            input_shape=(resolution, resolution, 3), alpha=alpha, include_top=False, weights=None
        )
        _load_weight_file(backbone, Path(weights), alpha)
    inputs = keras.Input(shape=(resolution, resolution, 3), name="image")
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    logit = keras.layers.Dense(1, name=LOGIT_LAYER)(x)
    probability = keras.layers.Activation("sigmoid", name=PROBABILITY_LAYER)(logit)
    return keras.Model(inputs, probability, name=f"mobilenet_v2_{alpha:g}"), backbone


OFFICIAL_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
"""Width multipliers with ImageNet weights in ``keras.applications.MobileNetV2``."""


def _load_weight_file(backbone: keras.Model, path: Path, alpha: float) -> None:
    """Load a no-top MobileNetV2 weight file into ``backbone``; raise UsageError when it is for another alpha."""
    if not path.is_file():
        raise UsageError(
            f"weight file {path} not found; pass --weights PATH to a MobileNetV2 no-top .h5 file, 'imagenet' or 'none'"
        )
    in_file = _project_channels_in_file(path)
    if in_file is not None and in_file != _project_channels(backbone):
        file_alpha = _alpha_for_channels(in_file)
        found = f"is for alpha {file_alpha:g}" if file_alpha is not None else "fits no official alpha"
        raise UsageError(
            f"weight file {path} {found}, not --alpha {alpha:g} (its layer widths differ); "
            f"pass the --alpha of the file or the weight file for alpha {alpha:g}"
        )
    try:
        backbone.load_weights(str(path))
    except (ValueError, OSError) as error:
        raise UsageError(
            f"weight file {path} does not fit MobileNetV2 with --alpha {alpha:g}: {error}; "
            "pass a Keras no-top MobileNetV2 .h5 file for this alpha"
        ) from None


def _project_channels(backbone: keras.Model) -> list[int]:
    """Return the sorted output widths of the backbone's ``*_project`` convolutions, which depend on alpha."""
    return sorted(
        int(layer.kernel.shape[-1])
        for layer in backbone.layers
        if layer.name.endswith("project") and isinstance(layer, keras.layers.Conv2D)
    )


def _project_channels_in_file(path: Path) -> list[int] | None:
    """Return the sorted output widths of the ``*_project`` kernels in a Keras .h5 weight file.

    Returns None when the file is not HDF5 or names no such kernel, so that
    Keras's own loading reports the problem.
    """
    import h5py

    widths: list[int] = []

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.endswith("project/kernel:0"):
            widths.append(int(item.shape[-1]))

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(visit)
    except OSError:
        return None
    return sorted(widths) or None


def _alpha_for_channels(widths: list[int]) -> float | None:
    """Return the official alpha whose MobileNetV2 has these project widths, or None."""
    for alpha in OFFICIAL_ALPHAS:
        candidate = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=alpha, include_top=False, weights=None)
        if _project_channels(candidate) == widths:
            return alpha
    return None


def logit_model(model: keras.Model) -> keras.Model:
    """Return a model that shares ``model``'s layers and outputs the pre-sigmoid logit."""
    try:
        layer = model.get_layer(LOGIT_LAYER)
    except ValueError:
        raise UsageError(
            f"model {model.name} has no layer named {LOGIT_LAYER!r}; convert it with --output-kind probability"
        ) from None
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_logit")
