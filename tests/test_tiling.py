"""The tiler: tiles cover the input, weights cross-fade, local maps are reproduced exactly."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from flowsr.runtime.tiling import Span, ramp, spans, tiled_map


@pytest.mark.parametrize(
    "length,tile,overlap,align",
    [
        (100, 32, 8, 1),
        (64, 64, 16, 1),
        (65, 32, 0, 1),
        (10, 32, 4, 1),
        (96, 40, 30, 1),
        (2048, 512, 64, 2),
        (4096, 1024, 128, 16),
        (1000, 256, 64, 8),
        (104, 64, 16, 8),
    ],
)
def test_spans_cover_with_required_overlap(length, tile, overlap, align):
    result = spans(length, tile, overlap, align)
    covered = torch.zeros(length, dtype=torch.bool)
    for span in result:
        assert 0 <= span.start and span.start + span.size <= length and span.size <= min(tile, length)
        assert span.size == result[0].size and span.start % align == 0 and span.size % align == 0
        covered[span.start : span.start + span.size] = True
    assert covered.all()
    for left, right in itertools.pairwise(result):
        assert left.start + left.size - right.start >= overlap
    # the fewest tiles of this size and overlap that cover the axis
    assert len(result) == max(1, -(-(length - overlap) // (tile - overlap)))


def test_tiles_add_little_work_beyond_the_overlaps():
    """A 4096 px side in 1024 px tiles with 128 px overlaps: five tiles of 928 px (the fixed-size grid with its last
    tile flush took six of 1024, 1.5 times the side)."""
    result = spans(4096, 1024, 128, align=16)
    assert [span.size for span in result] == [928] * 5
    assert sum(span.size for span in result) ** 2 / 4096**2 < 1.3


def test_ramp_by_hand():
    assert ramp(Span(0, 6), 6, 2).tolist() == [1, 1, 1, 1, 1, 1]
    assert ramp(Span(0, 6), 10, 2).tolist() == pytest.approx([1, 1, 1, 1, 2 / 3, 1 / 3])
    assert ramp(Span(4, 6), 10, 2).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])


def test_pointwise_map_is_reproduced_exactly():
    x = torch.randn(2, 3, 50, 70)
    out = tiled_map(x, lambda t: t * 2 + 1, tile=16, overlap=4, align=1)
    torch.testing.assert_close(out, x * 2 + 1)


@pytest.mark.parametrize("scale", [8, 1 / 8])
def test_scaled_maps_are_reproduced_exactly(scale):
    x = torch.randn(1, 2, 64, 96) if scale == 8 else torch.randn(1, 2, 512, 768)
    if scale == 8:

        def fn(t):
            return F.interpolate(t, scale_factor=8, mode="nearest")

        out = tiled_map(x, fn, tile=32, overlap=8, align=1, scale=8)
    else:

        def fn(t):
            return F.avg_pool2d(t, 8)

        out = tiled_map(x, fn, tile=256, overlap=64, align=8, scale=1 / 8)
    torch.testing.assert_close(out, fn(x))


def test_single_tile_calls_once_on_whole_input():
    calls = []
    x = torch.randn(1, 1, 20, 20)
    tiled_map(x, lambda t: calls.append(t.shape) or t, tile=32, overlap=8, align=1)
    assert calls == [x.shape]


def test_geometry_not_divisible_by_scale_is_refused():
    with pytest.raises(ValueError, match="multiples of the model stride"):
        tiled_map(torch.zeros(1, 1, 60, 60), lambda t: t[..., ::8, ::8], tile=20, overlap=4, align=1, scale=1 / 8)


@pytest.mark.parametrize("length,tile,overlap,align", [(4096, 1024, 128, 16), (100, 32, 8, 1), (200, 64, 16, 2)])
def test_fixed_size_tiles_keep_the_tile_for_compiled_backends(length, tile, overlap, align):
    """One shape whatever the image size, so a compiled graph is reused; still the fewest that cover."""
    result = spans(length, tile, overlap, align, fixed_size=True)
    assert {span.size for span in result} == {tile} and result[0].start == 0 and result[-1].start == length - tile
    assert all(left.start + left.size - right.start >= overlap for left, right in itertools.pairwise(result))
    assert len(result) == -(-(length - overlap) // (tile - overlap))
