"""DegFlow's math in plain PyTorch: scale <-> time, the multi-point spline targets, the look-ahead and its
segment-normalized 1/t weight, and the average velocity that makes single-NFE synthesis possible.

Scales s in [1, s_max] map to time t = (s - 1) / (s_max - 1); the knot latents are the RAE latents of the HR
image (t = 0) and of the real LR images at the training scales. The spline through them is `core/spline.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import spline
from .flow import Time, per_sample

EPS = 1e-3  # the floor of DESIGN.md's weighting formula


def scale_to_time(scale: float, s_max: float) -> float:
    if not 1.0 <= scale <= s_max:
        raise ValueError(f"scale {scale:g} is outside [1, {s_max:g}]; the model synthesizes x1 to x{s_max:g}")
    return (scale - 1.0) / (s_max - 1.0)


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


def lookahead(z: torch.Tensor, velocity: torch.Tensor, second: torch.Tensor, third: torch.Tensor, delta: Time) -> torch.Tensor:
    """z(t + delta) by the third-order Taylor step z + delta v + delta^2/2 z'' + delta^3/6 z''' (exact on a cubic
    segment when v = z')."""
    delta = per_sample(delta, z)
    return z + delta * velocity + delta**2 / 2 * second + delta**3 / 6 * third


def secant_velocity(z_t: torch.Tensor, dz_t: torch.Tensor, z_r: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(z(r) - z(t)) / (r - t), and z'(t) where r = t."""
    gap = per_sample(r - t, z_t)
    same = gap.abs() < 1e-6
    return torch.where(same, dz_t, (z_r - z_t) / torch.where(same, torch.ones_like(gap), gap))


def average_velocity(times: Sequence[float], knots: torch.Tensor, second: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """u(z(t), t, r) = (z(r) - z(t)) / (r - t) on the spline, and z'(t) where r = t: the single-NFE target."""
    z_t, dz_t = spline.evaluate(times, knots, second, t)
    z_r, _ = spline.evaluate(times, knots, second, r)
    return secant_velocity(z_t, dz_t, z_r, t, r)
