"""Fused flow interpolation z_t = (1 - s)·a + s·b, per-sample s, and the velocity target (b - a)·c in the same pass.

One kernel covers the straight paths that training samples (`training/paths.py` calls it where it runs): the
flow prior's generative path (a = z_0, b = ε, c = 1), FATC's points (a = z_H, b = z_L, s = t/t*, c = 1/t*) and
ATM's noisy points (plain interpolation).
`interpolate_noise` draws b = ε inside the kernel from a Philox seed, so the noise tensor is never
materialized; `materialize_noise` regenerates it for references and tests. Differentiable w.r.t. a and b.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from flowsr.core.flow import interpolate as interpolate_reference
from flowsr.core.flow import per_sample
from flowsr.kernels.dispatch import per_sample_vector, use_triton, warps_for

BLOCK = 2048  # elements per program


def reference(a, b, s, target_scale=None):
    """The torch composition: z_t, or (z_t, (b - a)·c)."""
    z_t = interpolate_reference(a, b, s)
    if target_scale is None:
        return z_t
    return z_t, (b - a) * per_sample(target_scale, a)


@triton.jit
def _gaussian(seed, offsets):
    # N(0, 1) as a function of (seed, flat element index) only, so any launch shape draws the same noise.
    return tl.randn(seed, offsets.to(tl.int32))


@triton.jit
def _interpolate_kernel(
    a_ptr,
    b_ptr,
    s_ptr,
    scale_ptr,
    z_ptr,
    target_ptr,
    seed,
    sample_numel,
    NOISE: tl.constexpr,
    TARGET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    sample = tl.program_id(1).to(tl.int64)
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < sample_numel
    offsets = sample * sample_numel + index
    s = tl.load(s_ptr + sample)
    a = tl.load(a_ptr + offsets, mask=mask).to(tl.float32)
    if NOISE:
        b = _gaussian(seed, offsets)
    else:
        b = tl.load(b_ptr + offsets, mask=mask).to(tl.float32)
    tl.store(z_ptr + offsets, (a + s * (b - a)).to(z_ptr.dtype.element_ty), mask=mask)
    if TARGET:
        c = tl.load(scale_ptr + sample)
        tl.store(target_ptr + offsets, ((b - a) * c).to(target_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interpolate_backward_kernel(
    grad_z_ptr,
    grad_target_ptr,
    s_ptr,
    scale_ptr,
    grad_a_ptr,
    grad_b_ptr,
    sample_numel,
    TARGET: tl.constexpr,
    GRAD_B: tl.constexpr,
    BLOCK: tl.constexpr,
):
    sample = tl.program_id(1).to(tl.int64)
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = index < sample_numel
    offsets = sample * sample_numel + index
    s = tl.load(s_ptr + sample)
    grad_z = tl.load(grad_z_ptr + offsets, mask=mask).to(tl.float32)
    grad_a = (1 - s) * grad_z
    grad_b = s * grad_z
    if TARGET:
        grad_target = tl.load(grad_target_ptr + offsets, mask=mask).to(tl.float32) * tl.load(scale_ptr + sample)
        grad_a -= grad_target
        grad_b += grad_target
    tl.store(grad_a_ptr + offsets, grad_a.to(grad_a_ptr.dtype.element_ty), mask=mask)
    if GRAD_B:
        tl.store(grad_b_ptr + offsets, grad_b.to(grad_b_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _noise_kernel(out_ptr, seed, numel, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, _gaussian(seed, offsets), mask=offsets < numel)


def _launch(tensor: torch.Tensor) -> tuple[tuple[int, int], int]:
    """Grid (blocks per sample, samples) and elements per sample: s and c are one load per program."""
    sample_numel = tensor.numel() // tensor.shape[0]
    return (triton.cdiv(sample_numel, BLOCK), tensor.shape[0]), sample_numel


def _allocate(a, b, s, target_scale, seed):
    z_t = torch.empty_like(a)
    return [z_t] if target_scale is None else [z_t, torch.empty_like(a)]


@triton_op("flowsr::interpolate", mutates_args=())
def _interpolate(
    a: torch.Tensor, b: torch.Tensor | None, s: torch.Tensor, target_scale: torch.Tensor | None, seed: int
) -> list[torch.Tensor]:
    """b = None draws b = ε from `seed`; target_scale = None skips the target."""
    outputs = _allocate(a, b, s, target_scale, seed)
    grid, sample_numel = _launch(a)
    # Unused pointers get a placeholder tensor; the constexpr flags keep the kernel off them.
    wrap_triton(_interpolate_kernel)[grid](
        a,
        a if b is None else b,
        s,
        s if target_scale is None else target_scale,
        outputs[0],
        outputs[-1],
        seed,
        sample_numel,
        NOISE=b is None,
        TARGET=target_scale is not None,
        BLOCK=BLOCK,
        num_warps=warps_for(BLOCK),
    )
    return outputs


def _allocate_backward(grad_z, grad_target, s, target_scale, grad_b_needed):
    grad_a = torch.empty_like(grad_z)
    return [grad_a, torch.empty_like(grad_z)] if grad_b_needed else [grad_a]


@triton_op("flowsr::interpolate_backward", mutates_args=())
def _interpolate_backward(
    grad_z: torch.Tensor,
    grad_target: torch.Tensor | None,
    s: torch.Tensor,
    target_scale: torch.Tensor | None,
    grad_b_needed: bool,
) -> list[torch.Tensor]:
    """grad_a = (1 - s)·g_z - c·g_target and grad_b = s·g_z + c·g_target, in one pass."""
    grads = _allocate_backward(grad_z, grad_target, s, target_scale, grad_b_needed)
    grid, sample_numel = _launch(grad_z)
    wrap_triton(_interpolate_backward_kernel)[grid](
        grad_z,
        grad_z if grad_target is None else grad_target,
        s,
        s if target_scale is None else target_scale,
        grads[0],
        grads[-1],
        sample_numel,
        TARGET=grad_target is not None,
        GRAD_B=grad_b_needed,
        BLOCK=BLOCK,
        num_warps=warps_for(BLOCK),
    )
    return grads


# The interpreter cannot launch on fake tensors, so tracing (export, compile) gets the shapes from here.
_interpolate.register_fake(_allocate)
_interpolate_backward.register_fake(_allocate_backward)


def _setup_backward(ctx, inputs, output):
    _, _, s, target_scale, _ = inputs
    ctx.save_for_backward(s, target_scale)


def _backward(ctx, grads):
    s, target_scale = ctx.saved_tensors
    grad_b_needed = ctx.needs_input_grad[1]
    grad_target = grads[1].contiguous() if target_scale is not None else None
    result = torch.ops.flowsr.interpolate_backward(grads[0].contiguous(), grad_target, s, target_scale, grad_b_needed)
    return result[0], result[1] if grad_b_needed else None, None, None, None


_interpolate.register_autograd(_backward, setup_context=_setup_backward)


def _kernel_arguments(a, s, target_scale):
    for name, value in (("s", s), ("target_scale", target_scale)):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise ValueError(f"{name} gets no gradient from the fused interpolation; pass it detached")
    scale = None if target_scale is None else per_sample_vector(target_scale, a.shape[0], a.device)
    return a.contiguous(), per_sample_vector(s, a.shape[0], a.device), scale


def _result(outputs):
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def interpolate(
    a: torch.Tensor, b: torch.Tensor, s: float | torch.Tensor, target_scale: float | torch.Tensor | None = None
):
    """z_t = (1 - s)·a + s·b, or (z_t, (b - a)·target_scale); s and target_scale are floats or per-sample (B,)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"a {tuple(a.shape)} {a.dtype} and b {tuple(b.shape)} {b.dtype} differ")
    if not use_triton(a):
        return reference(a, b, s, target_scale)
    a, s, scale = _kernel_arguments(a, s, target_scale)
    return _result(_interpolate(a, b.contiguous(), s, scale, 0))


def interpolate_noise(
    a: torch.Tensor, s: float | torch.Tensor, seed: int, target_scale: float | torch.Tensor | None = None
):
    """`interpolate(a, ε, s, target_scale)` with ε ~ N(0, I) drawn in the kernel from `seed` (never stored).

    ε equals `materialize_noise(a.shape, seed, a.device)`. The torch path (no GPU) draws torch.randn from a
    generator seeded with `seed` instead: the same law, other numbers.
    """
    if not use_triton(a):
        generator = torch.Generator(a.device).manual_seed(seed)
        noise = torch.randn(a.shape, generator=generator, device=a.device, dtype=torch.float32)
        return reference(a, noise.to(a.dtype), s, target_scale)
    if a.numel() >= 2**31:
        raise ValueError("in-kernel noise is indexed with 32-bit Philox counters: at most 2**31 - 1 elements")
    a, s, scale = _kernel_arguments(a, s, target_scale)
    return _result(_interpolate(a, None, s, scale, seed))


def materialize_noise(shape: torch.Size | tuple[int, ...], seed: int, device: torch.device | str) -> torch.Tensor:
    """The float32 ε that `interpolate_noise(..., seed)` draws for a tensor of `shape`, written out (Triton only)."""
    out = torch.empty(shape, dtype=torch.float32, device=device)
    _noise_kernel[(triton.cdiv(out.numel(), BLOCK),)](out, seed, out.numel(), BLOCK=BLOCK)
    return out
