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
BACKENDS = ("torch", "compile", "onnxruntime", "tensorrt")  # runtime.backends.BACKENDS' names, restated likewise
AUTO = "auto"  # a strength the model's estimator reads off each image


def strength_option(text: str) -> float | str:
    """`--strength`: "auto", or how degraded the inputs are, from 0 (clean) to 1 (heavy)."""
    if text == AUTO:
        return AUTO
    try:
        return number_option(0, 1)(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; use auto or a strength from 0 (clean) to 1 (heavy)") from None


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


# One spelling of each option that several commands share.


def add_model(parser: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    parser.add_argument("--model", required=required, metavar="DIR", help=help)


def add_output(parser: argparse.ArgumentParser, help: str, required: bool = True, metavar: str = "OUT") -> None:
    parser.add_argument("-o", "--output", required=required, metavar=metavar, help=help)


def add_overwrite(parser: argparse.ArgumentParser, help: str = "replace an existing output") -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_seed(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument("--seed", type=number_option(0, 2**32 - 1, integer=True), default=0, help=help)


def add_device(parser: argparse.ArgumentParser, help: str = "cpu, cuda, cuda:1 ... (default: cuda if present)") -> None:
    parser.add_argument("--device", default=None, help=help)


def add_tiles(parser: argparse.ArgumentParser, tile: int, overlap: int, unit: str) -> None:
    """--tile and --overlap, in `unit` pixels."""
    parser.add_argument(
        "--tile",
        type=number_option(0, MAX_TILE, integer=True),
        default=tile,
        help=f"tile size in {unit} pixels, a multiple of the model stride; 0 = no tiling (default {tile})",
    )
    parser.add_argument(
        "--overlap",
        type=number_option(0, MAX_TILE, integer=True),
        default=overlap,
        help=f"tile overlap in {unit} pixels (default {overlap})",
    )


def add_max_megapixels(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--max-megapixels",
        type=number_option(MIN_MEGAPIXELS, MAX_MEGAPIXELS),
        default=DEFAULT_MAX_MEGAPIXELS,
        help=f"refuse larger {what} (default {DEFAULT_MAX_MEGAPIXELS:g})",
    )


def add_model_output(parser: argparse.ArgumentParser) -> None:
    """For a stage that changes a model: -o OUT writes the changed copy, --in-place changes --model itself."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", metavar="OUT", help="write the changed model to this new directory")
    where.add_argument("--in-place", action="store_true", help="change the --model directory itself")
    add_overwrite(parser, "replace an existing OUT")
