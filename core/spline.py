"""Natural cubic splines through knot latents, per element: the DegFlow multi-point path z(t) and its derivatives.

Layout: knot latents are (B, K, ...), a sample's K knots side by side as a data loader collates them.
Knot times are K increasing floats shared by the batch (e.g. 0, 1/3, 1 for x1, x2, x4): configuration
constants, so checking them needs no device sync and traced graphs hold them as constants. The
evaluation time is a float or per-sample (B,). Natural boundary conditions: M_0 = M_{K-1} = 0, M being the second
derivative at the knots. Outside [t_0, t_{K-1}] the end cubics extrapolate (as scipy's CubicSpline does).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache, partial

import torch

from flowsr.core.flow import Time, per_sample


def validate_times(times: Sequence[float], knots: torch.Tensor) -> tuple[float, ...]:
    """The knot times as floats, once checked to increase and to match the knots' K."""
    times = tuple(float(time) for time in times)
    if len(times) < 2 or knots.ndim < 2 or knots.shape[1] != len(times):
        raise ValueError(f"knots {tuple(knots.shape)} need (B, K, ...) with K = {len(times)} >= 2 knot times")
    if any(right <= left for left, right in zip(times, times[1:], strict=False)):
        raise ValueError(f"knot times must increase, got {times}")
    return times


def device_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`torch.tensor(values)` on the device, copied once: an eager host-to-device copy per call syncs the stream."""
    if torch.compiler.is_compiling():  # traced graphs hold it as a constant; a cache would keep fake tensors
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, device, dtype)


@lru_cache(maxsize=64)
def _cached_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@lru_cache(maxsize=16)
def _second_derivative_weights(times: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    """W (K x K) with M = W z: the tridiagonal system of a natural spline depends only on the knot times."""
    count = len(times)
    h = torch.tensor(times, dtype=torch.float64).diff()
    system = torch.eye(count, dtype=torch.float64)  # rows 0 and K-1: M = 0
    slopes = torch.zeros(count, count, dtype=torch.float64)  # right-hand side as a matrix on z
    for i in range(1, count - 1):
        system[i, i - 1 : i + 2] = torch.stack([h[i - 1], 2 * (h[i - 1] + h[i]), h[i]])
        slopes[i, i - 1 : i + 2] = torch.stack([6 / h[i - 1], -6 / h[i - 1] - 6 / h[i], 6 / h[i]])
    return tuple(map(tuple, torch.linalg.solve(system, slopes).tolist()))


def second_derivatives(times: Sequence[float], knots: torch.Tensor) -> torch.Tensor:
    """M (B, K, ...) at the knots: the K x K solve once per set of knot times, then one pass over the knots."""
    weights = _second_derivative_weights(validate_times(times, knots))
    return torch.einsum("jk,bk...->bj...", device_constant(weights, knots.device, knots.dtype), knots)


def evaluate(
    times: Sequence[float], knots: torch.Tensor, second: torch.Tensor, t: Time, derivatives: int = 1
) -> tuple[torch.Tensor, ...]:
    """(z(t), z'(t)) and, for derivatives = 2 or 3, z''(t) and z'''(t); each (B, ...) like one knot slice."""
    if derivatives not in (1, 2, 3):
        raise ValueError(f"derivatives must be 1, 2 or 3, got {derivatives}")
    times = device_constant(validate_times(times, knots), knots.device, torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=knots.device).expand(knots.shape[0]).contiguous()
    segment = (torch.searchsorted(times, t, right=True) - 1).clamp(0, times.numel() - 2)
    rows = torch.arange(knots.shape[0], device=knots.device)
    z0, z1 = knots[rows, segment], knots[rows, segment + 1]
    m0, m1 = second[rows, segment], second[rows, segment + 1]
    h = times[segment + 1] - times[segment]
    left, right = t - times[segment], times[segment + 1] - t
    c = partial(per_sample, like=z0)  # per-sample scalars over the element dims, in the knots' dtype
    value = (
        c(right**3 / (6 * h)) * m0
        + c(left**3 / (6 * h)) * m1
        + c(right / h) * z0
        + c(left / h) * z1
        - c(right * h / 6) * m0
        - c(left * h / 6) * m1
    )
    slope = c(1 / h) * (z1 - z0) + c(left**2 / (2 * h) - h / 6) * m1 - c(right**2 / (2 * h) - h / 6) * m0
    curvature = c(right / h) * m0 + c(left / h) * m1
    jerk = c(1 / h) * (m1 - m0)
    return (value, slope, curvature, jerk)[: derivatives + 1]
