"""Fused natural-cubic-spline evaluation: z(t), z'(t) and optionally z''(t), z'''(t) of DegFlow paths in one pass.

Layout as `core.spline`: knots and second derivatives (B, K, ...), K increasing knot times (floats),
per-sample t. The kernel finds each sample's segment itself and reads only that segment's two knots
and two second derivatives; the second derivatives come from `core.spline.second_derivatives` (a tiny
solve in torch). Training targets only: no gradient flows to the knots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from flowsr.core.flow import Time
from flowsr.core.spline import device_constant, validate_times
from flowsr.core.spline import evaluate as reference
from flowsr.kernels.dispatch import per_sample_vector, use_triton, warps_for

BLOCK = 2048  # elements per program


@triton.jit
def _spline_kernel(
    times_ptr,
    knots_ptr,
    second_ptr,
    t_ptr,
    value_ptr,
    slope_ptr,
    curvature_ptr,
    jerk_ptr,
    sample_numel,
    KNOTS: tl.constexpr,
    DERIVATIVES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    sample = tl.program_id(1).to(tl.int64)
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < sample_numel
    t = tl.load(t_ptr + sample)
    segment = 0  # last knot at or before t, clamped to the end segments (they extrapolate)
    for k in tl.static_range(1, KNOTS - 1):
        segment += (t >= tl.load(times_ptr + k)).to(tl.int32)
    t0 = tl.load(times_ptr + segment)
    t1 = tl.load(times_ptr + segment + 1)
    h = t1 - t0
    left = t - t0
    right = t1 - t

    first = (sample * KNOTS + segment) * sample_numel + index
    z0 = tl.load(knots_ptr + first, mask=mask).to(tl.float32)
    z1 = tl.load(knots_ptr + first + sample_numel, mask=mask).to(tl.float32)
    m0 = tl.load(second_ptr + first, mask=mask).to(tl.float32)
    m1 = tl.load(second_ptr + first + sample_numel, mask=mask).to(tl.float32)

    out = sample * sample_numel + index
    value = (m0 * right * right * right + m1 * left * left * left) / (6 * h) + (z0 * right + z1 * left) / h
    value -= (m0 * right + m1 * left) * (h / 6)
    slope = (z1 - z0) / h + m1 * (left * left / (2 * h) - h / 6) - m0 * (right * right / (2 * h) - h / 6)
    tl.store(value_ptr + out, value.to(value_ptr.dtype.element_ty), mask=mask)
    tl.store(slope_ptr + out, slope.to(slope_ptr.dtype.element_ty), mask=mask)
    if DERIVATIVES >= 2:
        curvature = (m0 * right + m1 * left) / h
        tl.store(curvature_ptr + out, curvature.to(curvature_ptr.dtype.element_ty), mask=mask)
    if DERIVATIVES >= 3:
        tl.store(jerk_ptr + out, ((m1 - m0) / h).to(jerk_ptr.dtype.element_ty), mask=mask)


def _allocate(times, knots, second, t, derivatives):
    shape = (knots.shape[0], *knots.shape[2:])
    return [torch.empty(shape, dtype=knots.dtype, device=knots.device) for _ in range(derivatives + 1)]


@triton_op("flowsr::spline_evaluate", mutates_args=())
def _spline_evaluate(
    times: torch.Tensor, knots: torch.Tensor, second: torch.Tensor, t: torch.Tensor, derivatives: int
) -> list[torch.Tensor]:
    outputs = _allocate(times, knots, second, t, derivatives)
    sample_numel = outputs[0].numel() // knots.shape[0]
    padded = outputs + [outputs[-1]] * (3 - derivatives)  # placeholders for the derivatives not asked for
    wrap_triton(_spline_kernel)[(triton.cdiv(sample_numel, BLOCK), knots.shape[0])](
        times,
        knots,
        second,
        t,
        *padded,
        sample_numel,
        KNOTS=times.numel(),
        DERIVATIVES=derivatives,
        BLOCK=BLOCK,
        num_warps=warps_for(BLOCK),
    )
    return outputs


# The interpreter cannot launch on fake tensors, so tracing (export, compile) gets the shapes from here.
_spline_evaluate.register_fake(_allocate)


def evaluate(
    times: Sequence[float], knots: torch.Tensor, second: torch.Tensor, t: Time, derivatives: int = 1
) -> tuple[torch.Tensor, ...]:
    """(z(t), z'(t)) and, for derivatives = 2 or 3, z''(t) and z'''(t), each (B, ...) in the knots' dtype.

    knots and second (B, K, ...) with second from `core.spline.second_derivatives`; times K increasing floats;
    t a float or per-sample (B,). Computes in float32 on the Triton path.
    """
    if derivatives not in (1, 2, 3):
        raise ValueError(f"derivatives must be 1, 2 or 3, got {derivatives}")
    if second.shape != knots.shape:
        raise ValueError(f"second derivatives {tuple(second.shape)} and knots {tuple(knots.shape)} differ")
    times = validate_times(times, knots)
    if not use_triton(knots):
        return reference(times, knots, second, t, derivatives)
    times = device_constant(times, knots.device, torch.float32)
    t = per_sample_vector(t, knots.shape[0], knots.device)
    return tuple(_spline_evaluate(times, knots.contiguous(), second.contiguous(), t, derivatives))
