"""The fused Euler/unpack/denormalize kernel against core (Triton's interpreter on CPU, compiled on CUDA)."""

import pytest
import torch
from conftest import devices, varied_tiny
from torch._dynamo.testing import CompileCounterWithBackend

from flowsr.core.latents import pack
from flowsr.kernels import dispatch
from flowsr.kernels.dispatch import triton_runs_on, use_backend
from flowsr.kernels.euler_update import fused_euler_unpack, reference
from flowsr.runtime.backends import _fused_restore

FLUX = 0.1159, 0.3611
# (input dtype, output dtype): bf16 only where there is bf16 arithmetic
DTYPES = [
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float16, torch.float32),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.bfloat16),
]
SHAPES = [(1, 4, 2, 2), (7, 16, 6, 10), (2, 16, 18, 14), (3, 4, 10, 6), (2, 3, 4, 8)]  # (B, C, H, W) latents


def skip_unless_triton_runs(device, *dtypes):
    if not triton_runs_on(device):
        pytest.skip("CPU tensors need Triton's interpreter, which is off on machines with a GPU")
    if device == "cpu" and torch.bfloat16 in dtypes:
        pytest.skip("Triton's interpreter has no bf16 arithmetic")


def tokens(shape, dtype, device):
    """Velocity and latent tokens of a (B, C, H, W) latent, packed by core (channel index c*4 + dy*2 + dx)."""
    return pack(torch.randn(shape, device=device)).to(dtype), pack(torch.randn(shape, device=device)).to(dtype)


def mixed_steps(batch, device):
    """SR steps -t (each image's start time) and degradation steps +r in one batch."""
    steps = torch.rand(batch, device=device)
    return torch.where(torch.arange(batch, device=device) % 2 == 0, -steps, steps)


@devices
@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_with_mixed_steps(device, dtypes, shape):
    skip_unless_triton_runs(device, *dtypes)
    in_dtype, out_dtype = dtypes
    velocity, latent = tokens(shape, in_dtype, device)
    dt = mixed_steps(shape[0], device)
    height, width = shape[2:]
    with use_backend("triton"):
        out = fused_euler_unpack(velocity, latent, dt, height, width, *FLUX, out_dtype)
    expected = reference(velocity.float(), latent.float(), dt, height, width, *FLUX, out_dtype)
    assert out.shape == shape and out.dtype == out_dtype
    torch.testing.assert_close(out, expected)


@devices
def test_scalar_step_and_sd3_normalization(device):
    skip_unless_triton_runs(device)
    velocity, latent = tokens((2, 16, 6, 10), torch.float32, device)
    with use_backend("triton"):
        out = fused_euler_unpack(velocity, latent, -0.35, 6, 10, 0.0609, 1.5305, torch.float32)
    torch.testing.assert_close(out, reference(velocity, latent, -0.35, 6, 10, 0.0609, 1.5305, torch.float32))


@devices
def test_non_contiguous_tokens(device):
    skip_unless_triton_runs(device)
    velocity = torch.randn(64, 15, 2, device=device).permute(2, 1, 0)  # (B=2, N=15, 4C=64): a 6x10 latent
    latent = torch.randn(2, 64, 15, device=device).transpose(1, 2)
    dt = torch.tensor([-0.3, 0.6], device=device)
    with use_backend("triton"):
        out = fused_euler_unpack(velocity, latent, dt, 6, 10, *FLUX, torch.float32)
    torch.testing.assert_close(out, reference(velocity, latent, dt, 6, 10, *FLUX, torch.float32))


@devices
def test_backward_matches_reference_autograd(device):
    skip_unless_triton_runs(device)
    velocity, latent = tokens((3, 4, 6, 10), torch.float32, device)
    velocity.requires_grad_(True)
    latent.requires_grad_(True)
    dt = mixed_steps(3, device)
    upstream = torch.randn(3, 4, 6, 10, device=device)
    with use_backend("triton"):
        out = fused_euler_unpack(velocity, latent, dt, 6, 10, *FLUX, torch.float32)
    kernel_grads = torch.autograd.grad((out * upstream).sum(), (velocity, latent))
    expected = reference(velocity, latent, dt, 6, 10, *FLUX, torch.float32)
    reference_grads = torch.autograd.grad((expected * upstream).sum(), (velocity, latent))
    for kernel_grad, reference_grad in zip(kernel_grads, reference_grads, strict=True):
        torch.testing.assert_close(kernel_grad, reference_grad)


@devices
@pytest.mark.filterwarnings("ignore:Input #.*double precision")
def test_gradcheck(device):
    """Finite differences of the kernel itself (float32 is enough: the op is affine in both inputs)."""
    skip_unless_triton_runs(device)
    velocity, latent = (t.requires_grad_(True) for t in tokens((2, 4, 2, 4), torch.float32, device))
    dt = torch.tensor([-0.4, 0.7], device=device)
    with use_backend("triton"):
        assert torch.autograd.gradcheck(
            lambda v, z: fused_euler_unpack(v, z, dt, 2, 4, *FLUX, torch.float32),
            (velocity, latent),
            eps=1e-2,
            atol=1e-3,
            rtol=1e-3,
        )


@devices
def test_the_torch_backends_restore_steps_each_image_from_its_own_start_time(device):
    """The kernel's user, SR's restore on CUDA: one start time per image, the model's own restore's result."""
    skip_unless_triton_runs(device)
    model = varied_tiny().to(device)
    t = torch.tensor([0.1, 0.8], device=device)
    with torch.no_grad():
        z = model.encode(torch.rand(2, 3, 24, 40, device=device) * 2 - 1)
        with use_backend("triton"):
            fused = _fused_restore(model)(z, t)
        torch.testing.assert_close(fused, model.restore(z, t))
        assert (fused[0] - model.restore(z, t.flip(0))[0]).abs().max() > 1e-3  # the step is each image's


@pytest.mark.parametrize("size", [(6, 9), (5, 10), (4, 10)])
def test_rejects_tokens_that_do_not_form_the_latent(size):
    velocity, latent = tokens((1, 4, 6, 10), torch.float32, "cpu")
    with use_backend("triton"), pytest.raises(ValueError, match="do not form"):
        fused_euler_unpack(velocity, latent, 0.5, *size, *FLUX, torch.float32)


@devices
def test_export_keeps_the_registered_op(device):
    skip_unless_triton_runs(device)

    class Decode(torch.nn.Module):
        def forward(self, velocity, latent, dt):
            return fused_euler_unpack(velocity, latent, dt, 6, 10, *FLUX, torch.float16)

    velocity, latent = tokens((2, 16, 6, 10), torch.float32, device)
    dt = torch.tensor([-0.3, 0.2], device=device)
    with use_backend("triton"):
        program = torch.export.export(Decode(), (velocity, latent, dt))
        out = program.module()(velocity, latent, dt)
    assert torch.ops.flowsr.euler_unpack.default in [node.target for node in program.graph.nodes]
    torch.testing.assert_close(out, reference(velocity, latent, dt, 6, 10, *FLUX, torch.float16))


@devices
def test_compile_captures_the_op_in_one_graph(device):
    skip_unless_triton_runs(device)
    torch.compiler.reset()
    counter = CompileCounterWithBackend("eager")
    decode = torch.compile(fused_euler_unpack, backend=counter, fullgraph=True)
    velocity, latent = tokens((2, 16, 6, 10), torch.float32, device)
    with use_backend("triton"):
        out = decode(velocity, latent, -0.3, 6, 10, *FLUX, torch.float32)
    targets = [node.target for node in counter.graphs[0].graph.nodes]
    assert counter.frame_count == 1 and torch.ops.flowsr.euler_unpack.default in targets
    torch.testing.assert_close(out, reference(velocity, latent, -0.3, 6, 10, *FLUX, torch.float32))


def test_dispatcher_choice(monkeypatch):
    cpu = torch.empty(1)
    assert not dispatch.use_triton(cpu)  # auto: the torch reference off CUDA
    with use_backend("torch"):
        assert not dispatch.use_triton(cpu)
    with use_backend("triton"):
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert dispatch.use_triton(cpu)
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            dispatch.use_triton(cpu)
    with pytest.raises(ValueError), use_backend("cuda"):
        pass
