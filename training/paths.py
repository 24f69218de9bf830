"""The straight paths training samples: the flow prior's z_t = (1 - t)·z_0 + t·ε with its target ε - z_0, FATC's
points between z_H and z_L with their target (z_L - z_H)/t*, and ATM's noisy points.

Each is one fused pass of `kernels/flow_interpolation.py` (the point and its target together, forward and backward)
where that kernel runs (CUDA, or Triton's interpreter when a test forces it), and `core/flow.py`'s torch math
elsewhere: the same values. The kernel's benchmark (`benchmarks/test_kernels.py`) times what it saves against eager
torch on a GPU. Triton is imported only where it is installed: a CPU training install need not have it.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from flowsr.core import flow


@functools.cache
def _kernels():
    """The fused interpolation module, or None without triton."""
    if importlib.util.find_spec("triton") is None:
        return None
    from flowsr.kernels import flow_interpolation

    return flow_interpolation


def _fused(a: torch.Tensor, b: torch.Tensor):
    """The kernel module when it runs on these tensors (one dtype for both, as the kernel reads them), else None."""
    kernels = _kernels()
    if kernels is None or a.dtype != b.dtype:
        return None
    from flowsr.kernels.dispatch import use_triton

    return kernels if use_triton(a) else None


def linear_path(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The generative path at per-sample times t: (z_t, ε - z_0)."""
    kernels = _fused(z0, noise)
    if kernels is None:
        return flow.linear_path(z0, noise, t)
    return kernels.interpolate(z0, noise, t, 1.0)


def fatc_point(
    z_hr: torch.Tensor, z_lr: torch.Tensor, t: torch.Tensor, t_star: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """FATC at per-sample t in [0, t*]: ((1 - t/t*)·z_H + (t/t*)·z_L, (z_L - z_H)/t*)."""
    kernels = _fused(z_hr, z_lr)
    if kernels is None:
        return flow.fatc_point(z_hr, z_lr, t, t_star)
    return kernels.interpolate(z_hr, z_lr, t / t_star, 1 / t_star)


def interpolate(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(1 - s)·a + s·b at per-sample s."""
    kernels = _fused(a, b)
    if kernels is None:
        return flow.interpolate(a, b, s)
    return kernels.interpolate(a, b, s)
