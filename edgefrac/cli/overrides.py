"""Preprocessing and threshold options for the commands that score images with a model file.

``evaluate`` and ``bench`` take the same ``--threshold``, ``--scaling``,
``--resize`` and ``--output-kind`` options as ``infer``. A plain ``.tflite``
has no model card, so these options are the only way to give it the
preprocessing it was trained with. The options are copied from the ``infer``
command, so names, choices and help text stay the same in every command.
"""

from __future__ import annotations

import copy

import click

from edgefrac.card import OutputKind
from edgefrac.classifier import Overrides
from edgefrac.preprocessing import ResizeMethod, ValueScaling


def infer_options(*names: str):
    """Return a decorator that appends copies of ``infer``'s options called ``names`` to a command.

    Put it above ``@main.command()``, because it changes the command object.
    """
    from edgefrac.cli.infer import infer

    options = {param.name: param for param in infer.params}
    missing = [name for name in names if name not in options]
    if missing:
        raise RuntimeError(f"the infer command has no options named {missing}; update {__name__}")

    def add_options(command: click.Command) -> click.Command:
        command.params.extend(copy.copy(options[name]) for name in names)
        return command

    return add_options


def overrides_from(
    *,
    threshold: float | None = None,
    scaling: str | None = None,
    resize: str | None = None,
    output_kind: str | None = None,
) -> Overrides:
    """Build the classifier's Overrides from the option values; None keeps the model card's value."""
    return Overrides(
        threshold=threshold,
        scaling=None if scaling is None else ValueScaling(scaling),
        resize=None if resize is None else ResizeMethod(resize),
        output_kind=None if output_kind is None else OutputKind(output_kind),
    )
