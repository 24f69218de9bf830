"""The flow-interpolation kernels against core.flow (Triton's interpreter on CPU, compiled on CUDA)."""

import math

import pytest
import torch
from conftest import devices

from flowsr.core.flow import fatc_point, linear_path
from flowsr.core.flow import interpolate as interpolate_reference
from flowsr.kernels.dispatch import triton_runs_on, use_backend
from flowsr.kernels.flow_interpolation import interpolate, interpolate_noise, materialize_noise, reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 4, 2, 2), (7, 16, 6, 10), (2, 4, 18, 14), (3, 5)]


def skip_unless_triton_runs(device, *dtypes):
    if not triton_runs_on(device):
        pytest.skip("CPU tensors need Triton's interpreter, which is off on machines with a GPU")
    if device == "cpu" and torch.bfloat16 in dtypes:
        pytest.skip("Triton's interpreter has no bf16 arithmetic")


def pair(shape, dtype, device):
    return torch.randn(shape, device=device).to(dtype), torch.randn(shape, device=device).to(dtype)


def upcast_reference(a, b, s, target_scale=None):
    """The torch formula in float32, rounded once to the inputs' dtype as the kernel does."""
    outputs = reference(a.float(), b.float(), s, target_scale)
    if target_scale is None:
        return outputs.to(a.dtype)
    return tuple(output.to(a.dtype) for output in outputs)


@devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_with_per_sample_scales(device, dtype, shape):
    skip_unless_triton_runs(device, dtype)
    a, b = pair(shape, dtype, device)
    s = torch.rand(shape[0], device=device)
    scale = 1 / (0.1 + torch.rand(shape[0], device=device))
    with use_backend("triton"):
        z_t, target = interpolate(a, b, s, target_scale=scale)
        alone = interpolate(a, b, s)
    expected_z, expected_target = upcast_reference(a, b, s, scale)
    assert z_t.dtype == target.dtype == alone.dtype == dtype
    torch.testing.assert_close(z_t, expected_z)
    torch.testing.assert_close(target, expected_target)
    torch.testing.assert_close(alone, z_t, rtol=0, atol=0)


@devices
def test_scalar_s_and_target_scale(device):
    skip_unless_triton_runs(device)
    a, b = pair((2, 4, 6, 10), torch.float32, device)
    with use_backend("triton"):
        z_t, target = interpolate(a, b, 0.3, target_scale=2.0)
    torch.testing.assert_close(z_t, 0.7 * a + 0.3 * b)
    torch.testing.assert_close(target, 2.0 * (b - a))


@devices
def test_covers_fatc_and_generative_paths(device):
    skip_unless_triton_runs(device)
    z_hr, z_lr = pair((7, 16, 6, 10), torch.float32, device)
    t_star = 0.2 + 0.5 * torch.rand(7, device=device)
    t = t_star * torch.rand(7, device=device)
    with use_backend("triton"):
        fatc = interpolate(z_hr, z_lr, t / t_star, target_scale=1 / t_star)
        generative = interpolate_noise(z_hr, t, seed=11, target_scale=1.0)
    for output, expected in zip(fatc, fatc_point(z_hr, z_lr, t, t_star), strict=True):
        torch.testing.assert_close(output, expected)
    noise = materialize_noise(z_hr.shape, 11, device)
    for output, expected in zip(generative, linear_path(z_hr, noise, t), strict=True):
        torch.testing.assert_close(output, expected)


@devices
def test_non_contiguous_inputs(device):
    skip_unless_triton_runs(device)
    a = torch.randn(10, 6, 4, device=device).permute(2, 1, 0)
    b = torch.randn(4, 10, 6, device=device).transpose(1, 2)
    s = torch.rand(4, device=device)
    with use_backend("triton"):
        z_t = interpolate(a, b, s)
    torch.testing.assert_close(z_t, interpolate_reference(a, b, s))


@devices
@pytest.mark.parametrize("with_target", [False, True])
def test_backward_matches_reference_autograd(device, with_target):
    skip_unless_triton_runs(device)
    a, b = pair((7, 4, 6, 10), torch.float32, device)
    a.requires_grad_(True)
    b.requires_grad_(True)
    s = torch.rand(7, device=device)
    scale = 1 / (0.1 + torch.rand(7, device=device)) if with_target else None
    upstream = [torch.randn_like(a) for _ in range(2)]

    def gradients(fn):
        outputs = fn(a, b, s, scale)
        outputs = outputs if with_target else (outputs,)
        loss = sum((output * grad).sum() for output, grad in zip(outputs, upstream, strict=False))
        return torch.autograd.grad(loss, (a, b))

    with use_backend("triton"):
        kernel_grads = gradients(interpolate)
    for kernel_grad, expected in zip(kernel_grads, gradients(reference), strict=True):
        torch.testing.assert_close(kernel_grad, expected)


@devices
@pytest.mark.filterwarnings("ignore:Input #.*double precision")
def test_gradcheck(device):
    """Finite differences of the kernel itself (float32 is enough: the op is linear in a and b)."""
    skip_unless_triton_runs(device)
    a = torch.randn(2, 3, 2, 2, device=device, requires_grad=True)
    b = torch.randn(2, 3, 2, 2, device=device, requires_grad=True)
    s = torch.tensor([0.25, 0.8], device=device)
    scale = torch.tensor([2.0, -0.5], device=device)
    with use_backend("triton"):
        assert torch.autograd.gradcheck(
            lambda a, b: interpolate(a, b, s, target_scale=scale), (a, b), eps=1e-2, atol=1e-3, rtol=1e-3
        )
        assert torch.autograd.gradcheck(
            lambda a: interpolate_noise(a, s, seed=3, target_scale=scale), (a,), eps=1e-2, atol=1e-3, rtol=1e-3
        )


@devices
def test_noise_backward_matches_reference_autograd(device):
    skip_unless_triton_runs(device)
    a = torch.randn(3, 4, 6, 10, device=device, requires_grad=True)
    s = torch.rand(3, device=device)
    upstream = torch.randn_like(a), torch.randn_like(a)
    with use_backend("triton"):
        z_t, target = interpolate_noise(a, s, seed=5, target_scale=2.0)
    (kernel_grad,) = torch.autograd.grad((z_t * upstream[0]).sum() + (target * upstream[1]).sum(), a)
    z_t, target = reference(a, materialize_noise(a.shape, 5, device), s, 2.0)
    (expected,) = torch.autograd.grad((z_t * upstream[0]).sum() + (target * upstream[1]).sum(), a)
    torch.testing.assert_close(kernel_grad, expected)


@devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_noise_variant_matches_formula_on_regenerated_noise(device, dtype, shape):
    skip_unless_triton_runs(device, dtype)
    a = torch.randn(shape, device=device).to(dtype)
    s = torch.rand(shape[0], device=device)
    with use_backend("triton"):
        z_t, target = interpolate_noise(a, s, seed=1234, target_scale=1.5)
    noise = materialize_noise(shape, 1234, device)
    expected_z, expected_target = reference(a.float(), noise, s, 1.5)
    torch.testing.assert_close(z_t, expected_z.to(dtype))
    torch.testing.assert_close(target, expected_target.to(dtype))


def drawn_noise(shape, seed, device):
    """ε as the interpolation kernel draws it: with a = 0 and s = 1, z_t is ε itself."""
    with use_backend("triton"):
        return interpolate_noise(torch.zeros(shape, device=device), 1.0, seed)


@devices
def test_noise_is_the_materialized_noise_exactly(device):
    skip_unless_triton_runs(device)
    assert torch.equal(drawn_noise((3, 16, 6, 10), 99, device), materialize_noise((3, 16, 6, 10), 99, device))


@devices
def test_noise_is_standard_normal_and_seeded(device):
    """n = 2**16 draws: mean within 5/sqrt(n) of 0, variance within 5·sqrt(2/n) of 1 (5 sigma each)."""
    skip_unless_triton_runs(device)
    shape = (4, 16, 32, 32)
    n = math.prod(shape)
    noise = drawn_noise(shape, 2024, device).double()
    assert abs(noise.mean().item()) < 5 / math.sqrt(n)
    assert abs(noise.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert torch.equal(drawn_noise(shape, 2024, device).double(), noise)  # reproducible
    assert (drawn_noise(shape, 2025, device).double() == noise).float().mean() < 1e-3
    per_sample = noise.view(4, -1)
    assert not torch.equal(per_sample[0], per_sample[1])  # samples do not share a stream
    flat = materialize_noise((n,), 2024, device).double()
    assert torch.equal(flat.view(shape), noise)  # a function of the flat index only, not of the launch


def test_torch_backend_noise_is_seeded():
    a = torch.randn(2, 4, 6, 10)
    with use_backend("torch"):
        first = interpolate_noise(a, 0.5, seed=7)
        again = interpolate_noise(a, 0.5, seed=7)
        other = interpolate_noise(a, 0.5, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    noise = 2 * first - a  # z_t = (a + ε) / 2
    assert abs(noise.mean().item()) < 5 / math.sqrt(a.numel())


@devices
def test_rejects_gradients_for_s(device):
    skip_unless_triton_runs(device)
    a, b = pair((2, 4), torch.float32, device)
    with use_backend("triton"), pytest.raises(ValueError, match="s gets no gradient"):
        interpolate(a, b, torch.rand(2, device=device, requires_grad=True))


@devices
def test_export_keeps_the_registered_op(device):
    skip_unless_triton_runs(device)

    class Point(torch.nn.Module):
        def forward(self, a, b, s):
            return interpolate(a, b, s, target_scale=s)

    a, b = pair((2, 4, 6, 10), torch.float32, device)
    s = torch.rand(2, device=device)
    with use_backend("triton"):
        program = torch.export.export(Point(), (a, b, s))
        outputs = program.module()(a, b, s)
    assert torch.ops.flowsr.interpolate.default in [node.target for node in program.graph.nodes]
    for output, expected in zip(outputs, reference(a, b, s, s), strict=True):
        torch.testing.assert_close(output, expected)


def test_training_runs_the_kernel_and_gets_the_torch_values(monkeypatch):
    """The flow prior's objective (`training/paths.py`) goes through the fused kernel where it runs (forced here,
    under the interpreter) and gives the loss and gradients of the torch path."""
    skip_unless_triton_runs("cpu")
    from flowsr.core.sr_model import OneStepSR
    from flowsr.kernels import flow_interpolation
    from flowsr.training.pretrain import FlowObjective

    calls = []
    fused = flow_interpolation.interpolate
    monkeypatch.setattr(flow_interpolation, "interpolate", lambda *args: calls.append(1) or fused(*args))
    objective = FlowObjective(OneStepSR.from_preset("tiny", seed=0))
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    results = {}
    for backend in ("torch", "triton"):
        objective.zero_grad()
        with use_backend(backend):
            loss = objective(hr, torch.Generator().manual_seed(0))["loss"]
        loss.backward()
        grads = [p.grad.clone() for p in objective.model.transformer.parameters()]
        results[backend] = loss.detach(), grads
        assert len(calls) == (backend == "triton")  # the torch path never launched it
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for triton_grad, torch_grad in zip(results["triton"][1], results["torch"][1], strict=True):
        torch.testing.assert_close(triton_grad, torch_grad, rtol=1e-4, atol=1e-6)
