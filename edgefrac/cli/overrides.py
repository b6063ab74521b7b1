"""Preprocessing and threshold options for the commands that score images with a model file.

``infer``, ``capture``, ``evaluate`` and ``bench`` take the same ``--threshold``,
``--scaling``, ``--resize``, ``--output-kind`` and ``--test-time-augmentation``
options. A plain ``.tflite``
has no model card, so these options are the only way to give it the
preprocessing it was trained with. Each is defined once here, so names,
choices and help text are the same in every command.
"""

from __future__ import annotations

import click

from edgefrac.card import OutputKind
from edgefrac.classifier import Overrides
from edgefrac.cli.types import FiniteFloatRange
from edgefrac.preprocessing import ResizeMethod, ValueScaling
from edgefrac.tta import TestTimeAugmentation

OPTIONS = {
    "threshold": click.option(
        "--threshold",
        type=FiniteFloatRange(0.0, 1.0),
        help="Probability at or above which an image is labelled fractured. Default: the model card's.",
    ),
    "scaling": click.option(
        "--scaling",
        type=click.Choice([member.value for member in ValueScaling]),
        help="Pixel value range of the model input. Default: the model card's.",
    ),
    "resize": click.option(
        "--resize",
        type=click.Choice([member.value for member in ResizeMethod]),
        help="Resampling filter used to resize images. Default: the model card's.",
    ),
    "output_kind": click.option(
        "--output-kind",
        type=click.Choice([member.value for member in OutputKind]),
        help="Whether the model outputs a probability or a logit. Default: the model card's.",
    ),
    "test_time_augmentation": click.option(
        "--test-time-augmentation",
        type=click.Choice([member.value for member in TestTimeAugmentation]),
        help="Views scored per image: 'horizontal_flip' also scores the mirror image and averages the two "
        "logits, at twice the inference time. Default: the model card's ('none' without a card).",
    ),
}


def override_options(*names: str):
    """Return a decorator that adds the options called ``names`` (keys of ``OPTIONS``) to a command."""

    def add_options(command):
        for name in reversed(names):
            command = OPTIONS[name](command)
        return command

    return add_options


def overrides_from(
    *,
    threshold: float | None = None,
    scaling: str | None = None,
    resize: str | None = None,
    output_kind: str | None = None,
    test_time_augmentation: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> Overrides:
    """Build the classifier's Overrides from the option values; None keeps the model card's value."""
    return Overrides(
        height=height,
        width=width,
        threshold=threshold,
        scaling=None if scaling is None else ValueScaling(scaling),
        resize=None if resize is None else ResizeMethod(resize),
        output_kind=None if output_kind is None else OutputKind(output_kind),
        test_time_augmentation=None if test_time_augmentation is None else TestTimeAugmentation(test_time_augmentation),
    )
