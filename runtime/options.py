"""Command-line option types and the parser: every number is checked where it is parsed, and a bad option is one
line (what was wrong, where to look) with exit code 2, before any model loads or any file is read."""

from __future__ import annotations

import argparse
import sys

from flowsr.core.errors import out_of_bounds, printable

# The bounds of the settings that `SuperResolver`, `Degrader` and their options share.
DEFAULT_MAX_MEGAPIXELS = 100.0
MIN_MEGAPIXELS, MAX_MEGAPIXELS = 1e-6, 10000.0
MAX_SCALE = 32.0  # beyond this the input is a few pixels of the output: no model restores that
MAX_TILE = 16384
MAX_BATCH = 1024
MAX_STEPS = 10000  # Euler steps of the degrader's multi-step reference
MAX_COLOR_FIX_LEVELS = 8  # core.color_fix.MAX_LEVELS, restated so that parsing options imports no torch


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: no usage block around the message (subcommands inherit the class)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def number_option(low: float, high: float, integer: bool = False):
    """An argparse `type=` that accepts finite numbers in [low, high] only: nan, inf, 1e308 are refused at parsing."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if integer else 'a number'}") from None
        reason = out_of_bounds(value, low, high, integer)
        if reason is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse
