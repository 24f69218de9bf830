"""Latency of every backend end to end through SuperResolver (resize, encode, one NFE, decode), small preset.

Cases: 128x128 -> 512x512 and 256x256 -> 1024x1024 (x4), batch 1 and 8, on CUDA when present (float16, a
dtype every backend runs there) and otherwise on CPU (float32). Exported graphs and engines are made on first
use (into $FLOWSR_CACHE) before timing starts. `python benchmarks/backends_report.py RUN.json` tabulates a run.
"""

from __future__ import annotations

import functools

import pytest
import torch

from flowsr.runtime.super_resolver import SuperResolver

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = "float16" if CUDA else "float32"
PRESET = "small"
BACKENDS = ["torch", "compile", "onnxruntime", "tensorrt"]
SIZES = {"128->512": 128, "256->1024": 256}
BATCHES = [1, 8]


def cpu_skip_reason(backend: str, batch: int) -> str | None:
    """What is left out on a CPU so the suite runs in minutes; on a GPU everything runs."""
    if CUDA:
        return None
    if batch > 1:
        return "CPU: batch 8 takes over a minute per call at these sizes; run on a GPU"
    if backend == "compile":
        return (
            "CPU: inductor compiles the small preset for minutes per shape; "
            "tests/test_backends.py covers compile on CPU"
        )
    if backend == "tensorrt":
        return "TensorRT needs an NVIDIA GPU"
    return None


@functools.cache
def resolver(backend: str) -> SuperResolver:
    """One resolver per backend for the whole run: exports and engines are made once."""
    return SuperResolver.from_preset(PRESET, scale=4, device=DEVICE, dtype=DTYPE, backend=backend)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend(benchmark, timed, backend, size, batch):
    reason = cpu_skip_reason(backend, batch)
    if reason:
        pytest.skip(reason)
    try:
        sr = resolver(backend)
    except (RuntimeError, ValueError) as err:  # e.g. no TensorRT, no CUDA provider: said in one line
        pytest.skip(str(err).splitlines()[0])
    side = SIZES[size]
    lr = torch.rand(batch, 3, side, side, device=DEVICE) * 2 - 1
    benchmark.group = f"SuperResolver {PRESET} {size} x{batch} ({DEVICE}, {DTYPE})"
    benchmark.extra_info.update(
        backend=backend,
        preset=PRESET,
        input=f"{side}x{side}",
        output=f"{4 * side}x{4 * side}",
        batch=batch,
        device=DEVICE,
        dtype=DTYPE,
        threads=torch.get_num_threads(),
    )
    timed(sr.upscale_tensor, lr, rounds=10 if CUDA else 3)
