"""The spline kernel against core.spline in float64 (Triton's interpreter on CPU, compiled on CUDA)."""

import pytest
import torch
from conftest import devices

from flowsr.core.spline import evaluate as reference
from flowsr.core.spline import second_derivatives
from flowsr.kernels.dispatch import triton_runs_on, use_backend
from flowsr.kernels.spline import evaluate

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to the largest value
SHAPES = [(1, 4, 2, 2), (7, 16, 6, 10), (2, 4, 18, 14)]  # (B, C, H, W) of one knot latent
KNOT_TIMES = [[0.0, 1.0], [0.0, 1 / 3, 1.0], [0.0, 0.2, 0.45, 0.7, 1.0]]


def skip_unless_triton_runs(device, *dtypes):
    if not triton_runs_on(device):
        pytest.skip("CPU tensors need Triton's interpreter, which is off on machines with a GPU")
    if device == "cpu" and torch.bfloat16 in dtypes:
        pytest.skip("Triton's interpreter has no bf16 arithmetic")


def knot_latents(shape, times, dtype, device):
    batch, *latent = shape
    return torch.randn(batch, len(times), *latent, device=device).to(dtype)


def assert_matches(outputs, expected, dtype):
    assert len(outputs) == len(expected)
    for output, target in zip(outputs, expected, strict=True):
        assert output.dtype == dtype and output.shape == target.shape
        scale = TOLERANCE[dtype] * target.abs().max().item()
        torch.testing.assert_close(output.double(), target, rtol=TOLERANCE[dtype], atol=scale)


@devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("times", KNOT_TIMES)
def test_matches_reference_with_mixed_times(device, dtype, shape, times):
    skip_unless_triton_runs(device, dtype)
    knots = knot_latents(shape, times, dtype, device)
    second = second_derivatives(times, knots)
    t = torch.linspace(-0.1, 1.1, shape[0], device=device)[torch.randperm(shape[0])]  # every segment, ends outside
    with use_backend("triton"):
        outputs = evaluate(times, knots, second, t, derivatives=3)
    expected = reference(times, knots.double(), second.double(), t.double(), derivatives=3)
    assert_matches(outputs, expected, dtype)


@devices
@pytest.mark.parametrize("derivatives", [1, 2])
def test_fewer_derivatives_and_scalar_time(device, derivatives):
    skip_unless_triton_runs(device)
    times = [0.0, 1 / 3, 1.0]
    knots = knot_latents((3, 16, 6, 10), times, torch.float32, device)
    second = second_derivatives(times, knots)
    with use_backend("triton"):
        outputs = evaluate(times, knots, second, 0.5, derivatives=derivatives)
    expected = reference(times, knots.double(), second.double(), 0.5, derivatives=derivatives)
    assert_matches(outputs, expected, torch.float32)


@devices
def test_non_contiguous_knots(device):
    skip_unless_triton_runs(device)
    times = [0.0, 1 / 3, 1.0]
    knots = torch.randn(10, 6, 4, 3, 2, device=device).permute(4, 3, 2, 1, 0)  # (B=2, K=3, C=4, H=6, W=10)
    second = second_derivatives(times, knots)
    t = torch.tensor([0.2, 0.8], device=device)
    with use_backend("triton"):
        outputs = evaluate(times, knots, second, t, derivatives=3)
    expected = reference(times, knots.double(), second.double(), t.double(), derivatives=3)
    assert_matches(outputs, expected, torch.float32)


@devices
def test_export_keeps_the_registered_op(device):
    skip_unless_triton_runs(device)
    times = [0.0, 1 / 3, 1.0]
    knots = torch.randn(2, 3, 4, 6, 10, device=device)
    second = second_derivatives(times, knots)

    class Targets(torch.nn.Module):
        def forward(self, knots, second, t):
            return evaluate(times, knots, second, t, derivatives=2)

    t = torch.tensor([0.25, 0.75], device=device)
    with use_backend("triton"):
        program = torch.export.export(Targets(), (knots, second, t))
    targets = [node.target for node in program.graph.nodes]
    assert torch.ops.flowsr.spline_evaluate.default in targets
    with use_backend("triton"):
        outputs = program.module()(knots, second, t)
    assert_matches(outputs, reference(times, knots.double(), second.double(), t.double(), 2), torch.float32)


@devices
def test_no_gradient_to_knots(device):
    skip_unless_triton_runs(device)
    times = [0.0, 1.0]
    knots = torch.randn(1, 2, 4, device=device, requires_grad=True)
    with use_backend("triton"):
        value, _ = evaluate(times, knots, torch.zeros_like(knots), 0.5)
    with pytest.raises(RuntimeError, match="autograd"):
        value.sum().backward()
