"""DegFlow's math in plain PyTorch: scale <-> time, the multi-point spline targets, the look-ahead and its
segment-normalized 1/t weight, and the average velocity that makes single-NFE synthesis possible (as the secant
of the spline, or by MeanFlow's identity as the flow map of the model's own velocity).

Scales s in [1, s_max] map to time t = (s - 1) / (s_max - 1); the knot latents are the RAE latents of the HR
image (t = 0) and of the real LR images at the training scales. The spline through them is `core/spline.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import spline
from .flow import Time, per_sample

EPS = 1e-3  # the floor of the look-ahead's segment-normalized weight w = 1 / (rho + EPS)


def scale_to_time(scale: float, s_max: float) -> float:
    if not 1.0 <= scale <= s_max:
        raise ValueError(f"scale {scale:g} is outside [1, {s_max:g}]; the model synthesizes x1 to x{s_max:g}")
    return (scale - 1.0) / (s_max - 1.0)


def lr_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The LR grid of an H x W image at a continuous scale: round(H/s) x round(W/s), at least one pixel."""
    return max(1, round(height / scale)), max(1, round(width / scale))


def time_to_scale(t: float, s_max: float) -> float:
    return 1.0 + t * (s_max - 1.0)


def neighbour_knots(t: torch.Tensor, times: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t_l, t_r, index of t_r) per sample: the last knot at or before t and the first knot strictly after it
    (clamped to the ends)."""
    knots = torch.tensor(times, dtype=t.dtype, device=t.device)
    right = torch.searchsorted(knots, t, right=True).clamp(1, len(times) - 1)
    return knots[right - 1], knots[right], right


def lookahead_weight(t: torch.Tensor, times: Sequence[float]) -> torch.Tensor:
    """w = 1 / (r + 1e-3), r = max(t_r - t, 1e-3) / max(t_r - t_l, 1e-3): large close to the next knot, where the
    look-ahead is short and reliable; normalized per segment so long and short segments weigh alike."""
    t_l, t_r, _ = neighbour_knots(t, times)
    relative = (t_r - t).clamp_min(EPS) / (t_r - t_l).clamp_min(EPS)
    return 1.0 / (relative + EPS)


def lookahead_term(
    distance: torch.Tensor, t: torch.Tensor, times: Sequence[float], weighting: bool = True
) -> torch.Tensor:
    """The look-ahead loss as DegFlow's code takes it: mean over the samples of w·distance (w = 1 without
    `weighting`), unnormalized, so the weights set its size against the flow term as well as the balance within
    a batch (the trainer then scales it by 0.1)."""
    weight = lookahead_weight(t, times) if weighting else torch.ones_like(t)
    return (weight * distance).mean()


def lookahead(
    z: torch.Tensor, velocity: torch.Tensor, second: torch.Tensor, third: torch.Tensor, delta: Time
) -> torch.Tensor:
    """z(t + delta) by the third-order Taylor step z + delta v + delta^2/2 z'' + delta^3/6 z''' (exact on a cubic
    segment when v = z')."""
    delta = per_sample(delta, z)
    return z + delta * velocity + delta**2 / 2 * second + delta**3 / 6 * third


def secant_velocity(
    z_t: torch.Tensor, dz_t: torch.Tensor, z_r: torch.Tensor, t: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """(z(r) - z(t)) / (r - t), and z'(t) where r = t."""
    gap = per_sample(r - t, z_t)
    same = gap.abs() < 1e-6
    return torch.where(same, dz_t, (z_r - z_t) / torch.where(same, torch.ones_like(gap), gap))


def average_velocity(
    times: Sequence[float], knots: torch.Tensor, second: torch.Tensor, t: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """u(z(t), t, r) = (z(r) - z(t)) / (r - t) on the spline, and z'(t) where r = t: the single-NFE target."""
    z_t, dz_t = spline.evaluate(times, knots, second, t)
    z_r, _ = spline.evaluate(times, knots, second, r)
    return secant_velocity(z_t, dz_t, z_r, t, r)


def meanflow_target(
    velocity: torch.Tensor, total_derivative: torch.Tensor, t: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """MeanFlow's target for the average velocity from t to r: u = v + (r - t)·du/dt.

    (r - t)·u(z(t), t, r) is the integral of v from t to r along the trajectory through z(t); differentiating in t
    gives the identity, where du/dt = ∂u/∂z·v + ∂u/∂t is u's derivative along that trajectory. A u that meets it
    for every t is the flow map of the ODE dz/dt = v, so z(0) + r·u(z(0), 0, r) is what integrating v gives, not
    the conditional mean E[z(r) | z(0)] that regressing secants of re-drawn paths learns. At r = t it is v.
    """
    return velocity + per_sample(r - t, velocity) * total_derivative
