"""Latent-space tiling with blended overlaps.

Along each axis the fewest tiles that cover it with at least the overlap asked for, all of one size (no larger
than the tile asked for, shrunk to what the count needs) and evenly spread, so the work beyond the image's own is
the overlaps alone: a grid with a fixed tile size and the last tile flush with the edge can nearly double it.
Backends that compile per input shape (torch.compile, TensorRT's CUDA graphs) keep the tiles at the full size
instead (`fixed_size`), so that images of every size reuse the same graphs.
Each tile's result is weighted by a ramp that falls off linearly across the overlap on sides that touch another
tile, and the weighted results are normalized, so neighbouring tiles cross-fade and no seam appears.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowsr.core.errors import SettingsError


@dataclass(frozen=True)
class Span:
    start: int
    size: int


def spans(length: int, tile: int, overlap: int, align: int = 1, fixed_size: bool = False) -> list[Span]:
    """Cover [0, length) with the fewest tiles of at most `tile` (exactly `tile` with `fixed_size`) that overlap
    by >= `overlap`: one size, evenly spread, the last flush with the end. Sizes and starts are multiples of `align`
    (as `tile` and `length` are), so an overlap that is not one is rounded down to one."""
    if tile <= 0 or length <= tile:
        return [Span(0, length)]
    if not 0 <= overlap < tile:
        raise SettingsError(f"tile overlap {overlap} must be at least 0 and smaller than the tile {tile}")
    overlap = overlap // align * align  # at most tile - align: tiles one `align` apart always meet it
    count = -(-(length - overlap) // (tile - overlap))
    while True:  # starts rounded down to `align` may narrow an overlap: grow the tiles, then their number
        size = -(-(length + (count - 1) * overlap) // count)
        size = tile if fixed_size else min(tile, -(-size // align) * align)
        while True:
            starts = [(index * (length - size) // (count - 1)) // align * align for index in range(count - 1)]
            starts.append(length - size)
            if all(size - (right - left) >= overlap for left, right in itertools.pairwise(starts)):
                return [Span(start, size) for start in starts]
            if size + align > tile:
                break
            size += align
        count += 1


def ramp(span: Span, length: int, overlap: int, device=None) -> torch.Tensor:
    """1-D blend weight of one tile: a linear ramp over `overlap` on each side that has a neighbour."""
    weight = torch.ones(span.size, device=device)
    if overlap <= 0:
        return weight
    rising = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
    if span.start > 0:
        weight[:overlap] = rising
    if span.start + span.size < length:
        weight[-overlap:] = torch.minimum(weight[-overlap:], rising.flip(0))
    return weight


def tiled_map(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile: int,
    overlap: int,
    *,
    align: int,
    scale: float = 1.0,
    fixed_size: bool = False,
) -> torch.Tensor:
    """Apply `fn` over overlapping tiles of `x` (B, C, H, W) and blend the results.

    `fn` maps a (B, C, h, w) tile to (B, C', h*scale, w*scale): scale is 1/8 for a VAE encoder, 1 for the
    latent restore step, 8 for a decoder. `tile`, `overlap` and `align` (what tile sizes and starts must be
    multiples of, e.g. the model stride) are in units of `x`; `fixed_size` keeps every tile at `tile`. `fn` runs
    once per tile, and once on the whole input when it fits in one tile.
    """
    batch, _, height, width = x.shape
    rows, cols = (spans(length, tile, overlap, align, fixed_size) for length in (height, width))
    if len(rows) == 1 and len(cols) == 1:
        return fn(x)

    def scaled(value: int) -> int:
        result = value * scale
        if result != int(result):
            raise SettingsError(
                f"tile geometry {value} is not divisible by 1/{scale}; use multiples of the model stride"
            )
        return int(result)

    out_height, out_width, out_overlap = scaled(height), scaled(width), scaled(overlap)
    # A tile's weight is its row ramp times its column ramp, and the tiles form a full grid, so the weights' sum at a
    # pixel is (the row ramps' sum) x (the column ramps' sum): two vectors normalize the result, not a full plane.
    row_total = torch.zeros(out_height, device=x.device)
    col_total = torch.zeros(out_width, device=x.device)
    out = None
    for row_index, row in enumerate(rows):
        out_row = Span(scaled(row.start), scaled(row.size))
        row_weight = ramp(out_row, out_height, out_overlap, x.device)
        row_total[out_row.start : out_row.start + out_row.size] += row_weight
        for col in cols:
            out_col = Span(scaled(col.start), scaled(col.size))
            col_weight = ramp(out_col, out_width, out_overlap, x.device)
            if row_index == 0:
                col_total[out_col.start : out_col.start + out_col.size] += col_weight
            result = fn(x[:, :, row.start : row.start + row.size, col.start : col.start + col.size])
            dtype, result = result.dtype, result.float()
            if out is None:
                out = torch.zeros(batch, result.shape[1], out_height, out_width, device=x.device)
            window = (
                ...,
                slice(out_row.start, out_row.start + out_row.size),
                slice(out_col.start, out_col.start + out_col.size),
            )
            out[window] += result * (row_weight[:, None] * col_weight[None, :])
    del result
    return out.div_(row_total[:, None]).div_(col_total[None, :]).to(dtype)
