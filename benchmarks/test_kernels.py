"""Fused Triton kernels against the eager torch composition and torch.compile of it, beside a copy baseline.

GB/s counts the bytes an op needs: each input read once, each output written once (the spline reads
only the two knots and two second derivatives of each sample's segment; in-kernel noise reads nothing).
The copy `torch.empty_like(x).copy_(x)` at the same size gives the "% of copy bandwidth" column of
`kernels_report.py`. On CPU the kernels run under Triton's interpreter: only the smallest size, no compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

from flowsr.core import spline as spline_reference
from flowsr.core.latents import pack
from flowsr.kernels import flow_interpolation, spline
from flowsr.kernels.dispatch import use_backend
from flowsr.kernels.euler_update import fused_euler_unpack
from flowsr.kernels.euler_update import reference as euler_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SIZES = {  # (B, C, H, W) latents
    "1x16x64x64": (1, 16, 64, 64),  # one 512x512 image: 65,536 elements
    "16x16x64x64": (16, 16, 64, 64),  # a training batch of 512x512 crops: 1M
    "16x16x256x256": (16, 16, 256, 256),  # a training batch of 2048x2048 images: 16.8M
}
SMALLEST = "1x16x64x64"
DTYPES = [torch.bfloat16, torch.float32] if CUDA else [torch.float32]  # the interpreter has no bf16 arithmetic
KNOT_TIMES = (0.0, 1 / 3, 1.0)
SEED = 1234


class Case(NamedTuple):
    fused: Callable
    reference: Callable
    args: tuple
    bytes: int


def euler_unpack(shape, dtype):
    batch, _, height, width = shape
    velocity, latent = (pack(torch.randn(shape, device=DEVICE, dtype=dtype)) for _ in range(2))
    dt = torch.full((batch,), -0.4, device=DEVICE)
    args = (velocity, latent, dt, height, width, 0.1159, 0.3611, dtype)
    return Case(fused_euler_unpack, euler_reference, args, 3 * latent.nbytes)


def interpolate(shape, dtype):
    a, b = (torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(2))
    s = torch.rand(shape[0], device=DEVICE)
    return Case(flow_interpolation.interpolate, flow_interpolation.reference, (a, b, s), 3 * a.nbytes)


def interpolate_target(shape, dtype):
    a, b = (torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(2))
    s, scale = torch.rand(shape[0], device=DEVICE), torch.full((shape[0],), 2.5, device=DEVICE)
    return Case(flow_interpolation.interpolate, flow_interpolation.reference, (a, b, s, scale), 4 * a.nbytes)


def seeded_noise_point(a, s, scale):
    return flow_interpolation.interpolate_noise(a, s, SEED, scale)


def drawn_noise_point(a, s, scale):
    """What training does without the kernel: draw ε into memory, then the formula."""
    return flow_interpolation.reference(a, torch.randn_like(a), s, scale)


def interpolate_noise_target(shape, dtype):
    a = torch.randn(shape, device=DEVICE, dtype=dtype)
    s, scale = torch.rand(shape[0], device=DEVICE), torch.ones(shape[0], device=DEVICE)
    return Case(seeded_noise_point, drawn_noise_point, (a, s, scale), 3 * a.nbytes)


def spline_case(derivatives):
    def build(shape, dtype):
        batch, *latent = shape
        knots = torch.randn(batch, len(KNOT_TIMES), *latent, device=DEVICE, dtype=dtype)
        second = spline_reference.second_derivatives(KNOT_TIMES, knots)
        t = torch.rand(batch, device=DEVICE)
        needed = (4 + derivatives + 1) * knots[:, 0].nbytes
        return Case(spline.evaluate, spline_reference.evaluate, (KNOT_TIMES, knots, second, t, derivatives), needed)

    return build


OPS = {
    "euler_unpack": euler_unpack,
    "interpolate": interpolate,
    "interpolate+target": interpolate_target,
    "interpolate_noise+target": interpolate_noise_target,
    "spline d1": spline_case(1),
    "spline d3": spline_case(3),
}


def skip_on_cpu(size, implementation):
    if CUDA:
        return
    if size != SMALLEST:
        pytest.skip("no GPU: the Triton interpreter is only timed on the smallest size")
    if implementation == "compile":
        pytest.skip("no GPU: torch.compile on CPU builds C++ for ~20 s per op; not the GPU comparison this suite makes")


def forced_triton(fn: Callable) -> Callable:
    def run(*args):
        with use_backend("triton"):  # the default on CUDA; the interpreter on CPU
            return fn(*args)

    return run


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def measure(timed, benchmark, fn, nbytes, **labels):
    """Time fn, labelling the result for kernels_report.py and recording the achieved GB/s."""
    benchmark.group = " ".join(str(value) for value in labels.values())
    benchmark.extra_info.update(labels, bytes=nbytes)
    timed(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("implementation", ["triton", "eager", "compile"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("op", OPS)
def test_op(timed, benchmark, op, size, dtype, implementation):
    skip_on_cpu(size, implementation)
    case = OPS[op](SIZES[size], dtype)
    if implementation == "triton":
        fn = forced_triton(case.fused)
    elif implementation == "eager":
        fn = case.reference
    else:
        torch.compiler.reset()  # a fresh static-shape graph per size: no recompile limit, no silent eager fallback
        fn = torch.compile(case.reference, dynamic=False, fullgraph=True)
    labels = dict(op=op, size=size, dtype=dtype_name(dtype), implementation=implementation)
    measure(timed, benchmark, lambda: fn(*case.args), case.bytes, **labels)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("size", SIZES)
def test_copy(timed, benchmark, size, dtype):
    skip_on_cpu(size, "copy")
    x = torch.randn(SIZES[size], device=DEVICE).to(dtype)
    measure(
        timed,
        benchmark,
        lambda: torch.empty_like(x).copy_(x),
        2 * x.nbytes,
        op="copy",
        size=size,
        dtype=dtype_name(dtype),
        implementation="torch",
    )
