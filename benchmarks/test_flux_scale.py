"""FLUX.1-dev scale on a GPU: 128x128 -> 512x512 (x4) end to end, random bf16 weights of the `flux-dev` preset.

Compares a plain diffusers-style eager composition (vae.encode -> pack -> transformer -> Euler -> unpack ->
vae.decode, written out below with no flowsr runtime) with flowsr's eager and best (`compile`: inductor with
CUDA graphs) backends. extra_info reports the transformer's FLOPs for one call (counted with
`torch.utils.flop_counter.FlopCounterMode`), its achieved TFLOP/s and its model-FLOPs utilization against the
GPU's dense bf16 peak. TensorRT is left out at this scale: exporting and building a 12B-parameter engine takes
longer than a benchmark run should.

    pytest benchmarks/test_flux_scale.py --benchmark-only --benchmark-json benchmarks/results/flux-<gpu>.json
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flowsr.core.presets import build_transformer, build_vae, get_preset
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime.super_resolver import SuperResolver

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="flux-dev scale needs a CUDA GPU (about 25 GB of bf16 weights)"
)

DTYPE = torch.bfloat16
SCALE, SIDE, BATCH = 4, 128, 1
T_STAR = 0.5
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, by a name fragment of the device.
PEAK_BF16_TFLOPS = {
    "H200": ("H200", 989.0),
    "H100 80GB HBM3": ("H100 SXM", 989.0),
    "H100 NVL": ("H100 NVL", 835.0),
    "H100 PCIe": ("H100 PCIe", 756.0),
}


@functools.cache
def flux_model() -> OneStepSR:
    """The exact FLUX.1-dev VAE and transformer configuration, random weights made directly on the GPU in bf16."""
    preset = get_preset("flux-dev")
    default = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device("cuda"):
            vae, transformer = build_vae(preset), build_transformer(preset)
            prompt = torch.randn(1, preset.text_tokens, preset.transformer["joint_attention_dim"])
            pooled = torch.randn(1, preset.transformer["pooled_projection_dim"])
    finally:
        torch.set_default_dtype(default)
    return OneStepSR(vae, transformer, prompt, pooled, T_STAR, preset.guidance).eval()


def peak_tflops() -> tuple[str, float | None]:
    name = torch.cuda.get_device_name()
    for fragment, (label, peak) in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return label, peak
    return name, None


def diffusers_eager(model: OneStepSR, lr: torch.Tensor) -> torch.Tensor:
    """The same one-step SR as plain diffusers calls, as a user would write it without flowsr."""
    vae, transformer = model.vae, model.transformer
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    image = F.interpolate(lr, scale_factor=SCALE, mode="bicubic", align_corners=False).clamp(-1, 1).to(DTYPE)
    latent = (vae.encode(image).latent_dist.mode() - shift) * scale
    b, c, h, w = latent.shape
    tokens = latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h // 2 * w // 2, c * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(lr.device, DTYPE)
    t = torch.full((b,), T_STAR, device=lr.device, dtype=DTYPE)
    velocity = transformer(
        hidden_states=tokens,
        encoder_hidden_states=model.prompt_embeds.expand(b, -1, -1),
        pooled_projections=model.pooled_prompt_embeds.expand(b, -1),
        timestep=t,
        img_ids=img_ids,
        txt_ids=torch.zeros(model.prompt_embeds.shape[1], 3, device=lr.device, dtype=DTYPE),
        guidance=torch.full((b,), model.guidance, device=lr.device, dtype=DTYPE),
        return_dict=False,
    )[0]
    tokens = tokens - T_STAR * velocity
    latent = tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
    return vae.decode(latent / scale + shift, return_dict=False)[0].float().clamp(-1, 1)


def cuda_ms(fn, *args, repeats: int = 10) -> float:
    """Median milliseconds of `fn(*args)` by CUDA events, after one warm-up call."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("implementation", ["diffusers-eager", "torch", "compile"])
@torch.inference_mode()
def test_flux_dev_128_to_512(benchmark, timed, implementation):
    model = flux_model()
    lr = torch.rand(BATCH, 3, SIDE, SIDE, device="cuda") * 2 - 1
    z = model.encode(F.interpolate(lr, scale_factor=SCALE, mode="bicubic").to(DTYPE))
    if implementation == "diffusers-eager":
        run, restore = functools.partial(diffusers_eager, model), model.restore
    else:
        sr = SuperResolver(model, scale=SCALE, device="cuda", dtype=DTYPE, backend=implementation)
        run, restore = sr.upscale_tensor, sr.backend.graphs["transformer"]
    t = model.start_time(torch.zeros(BATCH, device="cuda"))
    with FlopCounterMode(display=False) as counter:
        model.restore(z, t)  # one transformer evaluation (plus the pack/Euler/unpack, no matmuls)
    flops = counter.get_total_flops()
    transformer_ms = cuda_ms(restore, z, t)
    label, peak = peak_tflops()
    achieved = flops / (transformer_ms * 1e-3) / 1e12
    benchmark.group = f"flux-dev {SIDE}->{SIDE * SCALE} x{BATCH} ({torch.cuda.get_device_name()}, bf16)"
    benchmark.extra_info.update(
        backend=implementation,
        preset="flux-dev",
        input=f"{SIDE}x{SIDE}",
        output=f"{SIDE * SCALE}x{SIDE * SCALE}",
        batch=BATCH,
        device=torch.cuda.get_device_name(),
        dtype="bfloat16",
        transformer_tflop=flops / 1e12,
        transformer_ms=transformer_ms,
        transformer_tflops=achieved,
        peak_bf16_tflops=peak,
        peak_name=label,
        mfu=achieved / peak if peak else None,
    )
    timed(run, lr, rounds=10)
