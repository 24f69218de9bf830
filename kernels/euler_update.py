"""Fused one-step Euler update: z + dt·v on packed tokens, unpacked to NCHW, denormalized and cast in one pass.

The torch composition reads and writes the latent four or five times (step, unpack copy, divide, add,
cast); the kernel reads each token tensor once and writes the decoder's input once. Its user is SR's restore
in the torch backend on CUDA (`runtime.backends`), with dt = -t: each image's start time (the model's time for the
strength its estimator reads off the image, or t*), so a batch carries one step per sample. Steps of either sign
are fused alike (a single-NFE degradation step would be dt = +r), and a batch may mix them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from flowsr.core.flow import euler_step, per_sample
from flowsr.core.latents import PATCH, LatentNormalization, pack, unpack
from flowsr.kernels.dispatch import per_sample_vector, use_triton, warps_for

MAX_BLOCK = 4096  # elements per program: tokens of one token row x all their channels


def reference(velocity_tokens, latent_tokens, dt, height, width, shift, scale, out_dtype):
    """The plain-op composition the kernel fuses (and what ONNX/TensorRT graphs use)."""
    stepped = unpack(euler_step(latent_tokens, velocity_tokens, dt), height, width)
    return LatentNormalization(shift, scale).denormalize(stepped).to(out_dtype)


@triton.jit
def _euler_unpack_kernel(
    velocity_ptr,
    latent_ptr,
    dt_ptr,
    out_ptr,
    shift,
    scale,
    height,
    width,
    channels,
    CHANNELS: tl.constexpr,
    TOKENS: tl.constexpr,
):
    # One program: TOKENS consecutive tokens of one token row of one sample, all 4C channels.
    # Indexing either side from the other would leave the other side 2-element pairs 4C apart.
    # Instead the program reads its tokens as one contiguous chunk, transposes the tile (one
    # shared-memory layout change) and writes each (channel, dy) as a run of 2*TOKENS contiguous
    # pixels: 16-byte vector loads and stores on both sides (checked in the sm_90 PTX).
    pid = tl.program_id(0).to(tl.int64)
    token_cols = width // 2
    token_rows = height // 2
    segments = tl.cdiv(token_cols, TOKENS)
    segment = pid % segments
    row = (pid // segments) % token_rows
    sample = pid // (segments * token_rows)

    col = segment * TOKENS + tl.arange(0, TOKENS)
    depth = 4 * channels
    feature = tl.arange(0, 4 * CHANNELS)  # c*4 + dy*2 + dx
    token = (sample * token_rows + row) * token_cols + col
    in_offsets = token[:, None] * depth + feature[None, :]
    in_mask = (col[:, None] < token_cols) & (feature[None, :] < depth)
    velocity = tl.load(velocity_ptr + in_offsets, mask=in_mask).to(tl.float32)
    latent = tl.load(latent_ptr + in_offsets, mask=in_mask).to(tl.float32)
    dt = tl.load(dt_ptr + sample)
    value = (latent + dt * velocity) / scale + shift

    # (token, c, dy, dx) -> (c, dy, token, dx) -> (c, dy, x within the run)
    value = tl.reshape(value, (TOKENS, CHANNELS, 2, 2))
    value = tl.permute(value, (1, 2, 0, 3))
    value = tl.reshape(value, (CHANNELS, 2, 2 * TOKENS))
    c = tl.arange(0, CHANNELS)[:, None, None]
    y = 2 * row + tl.arange(0, 2)[None, :, None]
    x = 2 * segment * TOKENS + tl.arange(0, 2 * TOKENS)[None, None, :]
    out_offsets = ((sample * channels + c) * height + y) * width + x
    tl.store(out_ptr + out_offsets, value.to(out_ptr.dtype.element_ty), mask=(c < channels) & (x < width))


def _allocate(velocity_tokens, latent_tokens, dt, height, width, shift, scale, out_dtype):
    batch, _, depth = latent_tokens.shape
    return torch.empty((batch, depth // 4, height, width), dtype=out_dtype, device=latent_tokens.device)


@triton_op("flowsr::euler_unpack", mutates_args=())
def _euler_unpack(
    velocity_tokens: torch.Tensor,
    latent_tokens: torch.Tensor,
    dt: torch.Tensor,
    height: int,
    width: int,
    shift: float,
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    out = _allocate(velocity_tokens, latent_tokens, dt, height, width, shift, scale, out_dtype)
    channels = out.shape[1]
    padded = triton.next_power_of_2(channels)
    tokens = min(triton.next_power_of_2(width // 2), max(1, MAX_BLOCK // (4 * padded)))
    grid = (out.shape[0] * (height // 2) * triton.cdiv(width // 2, tokens),)
    wrap_triton(_euler_unpack_kernel)[grid](
        velocity_tokens,
        latent_tokens,
        dt,
        out,
        shift,
        scale,
        height,
        width,
        channels,
        CHANNELS=padded,
        TOKENS=tokens,
        num_warps=warps_for(4 * padded * tokens),
    )
    return out


# The interpreter cannot launch on fake tensors, so tracing (export, compile) gets the shapes from here.
_euler_unpack.register_fake(_allocate)


def _setup_backward(ctx, inputs, output):
    velocity_tokens, latent_tokens, dt, _, _, _, scale, _ = inputs
    ctx.save_for_backward(dt)
    ctx.scale = scale
    ctx.dtypes = velocity_tokens.dtype, latent_tokens.dtype


def _backward(ctx, grad_out):
    """Gradients reach the tokens when training backpropagates through the decoder (L_rec)."""
    (dt,) = ctx.saved_tensors
    grad_latent = pack(grad_out.contiguous().float()) / ctx.scale
    grad_velocity = per_sample(dt, grad_latent) * grad_latent
    return grad_velocity.to(ctx.dtypes[0]), grad_latent.to(ctx.dtypes[1]), None, None, None, None, None, None


_euler_unpack.register_autograd(_backward, setup_context=_setup_backward)


def fused_euler_unpack(
    velocity_tokens: torch.Tensor,
    latent_tokens: torch.Tensor,
    dt: float | torch.Tensor,
    height: int,
    width: int,
    shift: float,
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The decoder's NCHW latent (B, C, height, width) in `out_dtype`: denormalize(unpack(z + dt·v)).

    Tokens are (B, N, 4C) as `core.latents.pack` makes them. `dt` is a float or a per-sample (B,) tensor.
    Computes in float32 on the Triton path.
    """
    if velocity_tokens.shape != latent_tokens.shape:
        raise ValueError(f"velocity {tuple(velocity_tokens.shape)} and latent {tuple(latent_tokens.shape)} differ")
    batch, count, depth = latent_tokens.shape
    if height % PATCH or width % PATCH or count != (height // PATCH) * (width // PATCH) or depth % (PATCH * PATCH):
        raise ValueError(f"{count} tokens of width {depth} do not form a {height}x{width} latent")
    if not use_triton(latent_tokens):
        return reference(velocity_tokens, latent_tokens, dt, height, width, shift, scale, out_dtype)
    dt = per_sample_vector(dt, batch, latent_tokens.device)
    velocity_tokens, latent_tokens = velocity_tokens.contiguous(), latent_tokens.contiguous()
    return _euler_unpack(velocity_tokens, latent_tokens, dt, height, width, float(shift), float(scale), out_dtype)
