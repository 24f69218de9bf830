"""core.spline (the torch reference of the spline kernel) against scipy's natural CubicSpline."""

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from flowsr.core.spline import evaluate, second_derivatives

KNOT_TIMES = [[0.0, 1.0], [0.0, 1 / 3, 1.0], [0.0, 0.1, 0.45, 0.5, 1.0]]


def scipy_splines(times, knots):
    return [CubicSpline(times, sample.numpy(), axis=0, bc_type="natural") for sample in knots]


@pytest.mark.parametrize("times", KNOT_TIMES)
def test_second_derivatives_match_scipy(times):
    knots = torch.randn(3, len(times), 4, 5, dtype=torch.float64)
    second = second_derivatives(times, knots)
    expected = np.stack([spline(times, 2) for spline in scipy_splines(times, knots)])
    np.testing.assert_allclose(second.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert second[:, [0, -1]].abs().max() == 0  # natural boundary


@pytest.mark.parametrize("times", KNOT_TIMES)
def test_values_and_three_derivatives_match_scipy(times):
    knots = torch.randn(7, len(times), 2, 3, 5, dtype=torch.float64)
    # inside, on knots, at both ends and outside (the end cubics extrapolate)
    t = torch.tensor([-0.25, 0.0, 0.05, 1 / 3, 0.47, 1.0, 1.3], dtype=torch.float64)
    outputs = evaluate(times, knots, second_derivatives(times, knots), t, derivatives=3)
    for sample, spline in enumerate(scipy_splines(times, knots)):
        for order, output in enumerate(outputs):
            expected = spline(t[sample].item(), order)
            np.testing.assert_allclose(output[sample].numpy(), expected, rtol=1e-9, atol=1e-9)


def test_scalar_time_and_fewer_derivatives():
    times = [0.0, 1 / 3, 1.0]
    knots = torch.randn(2, 3, 4, dtype=torch.float64)
    value, slope = evaluate(times, knots, second_derivatives(times, knots), 0.6)
    spline = scipy_splines(times, knots)[1]
    np.testing.assert_allclose(value[1].numpy(), spline(0.6), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(slope[1].numpy(), spline(0.6, 1), rtol=1e-10, atol=1e-12)


def test_float32_follows_float64():
    times = [0.0, 1 / 3, 1.0]
    knots = torch.randn(3, 3, 16, 6, 10)
    t = torch.tensor([0.1, 0.5, 0.9])
    single = evaluate(times, knots, second_derivatives(times, knots), t, derivatives=3)
    double = evaluate(times, knots.double(), second_derivatives(times, knots.double()), t.double(), 3)
    for low, high in zip(single, double, strict=True):
        assert low.dtype == torch.float32
        torch.testing.assert_close(low.double(), high, rtol=1e-5, atol=1e-5 * high.abs().max().item())


@pytest.mark.parametrize("times", [[0.0, 0.5, 0.5], [1.0, 0.0], [0.0]])
def test_rejects_bad_knot_times(times):
    knots = torch.randn(1, len(times), 4)
    with pytest.raises(ValueError):
        second_derivatives(times, knots)
