"""Parameter types shared by the commands."""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also rejects ``nan`` and ``inf``.

    ``nan`` compares false with any bound, so it passes every range check. ``inf`` passes a range
    with no upper bound. Without this check, either would reach the library as a valid value.
    """

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number
