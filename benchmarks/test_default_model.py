"""Latency of the shipped default SR model (runtime/models/sr-small-x4) through SuperResolver, end to end.

128x128 -> 512x512 on every backend of this machine in one run: torch in float32 and bfloat16, torch.compile,
onnxruntime (CPU or CUDA provider; float32, and int8 from the model directory's QDQ export), TensorRT on a GPU
(float16, and int8 from the same export).
The colour fix is on, as `flowsr sr` runs it.
`python benchmarks/backends_report.py RUN.json` tabulates a run.
"""

from __future__ import annotations

import functools

import pytest
import torch

from flowsr.runtime.super_resolver import SuperResolver

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CASES = [
    ("torch", "float32"),
    ("torch", "bfloat16"),
    ("compile", "float32"),
    ("compile", "bfloat16"),
    ("onnxruntime", "float32"),
    ("onnxruntime", "int8"),  # the model directory's QDQ export (onnx/int8)
    ("tensorrt", "float16"),
    ("tensorrt", "int8"),  # the same QDQ export, an explicitly quantized engine
]


@functools.cache
def resolver(backend: str, dtype: str) -> SuperResolver:
    return SuperResolver(scale=4, device=DEVICE, dtype=dtype, backend=backend, tile=0, vae_tile=0)


@pytest.mark.parametrize("backend,dtype", CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_default_model_128_to_512(benchmark, timed, backend, dtype):
    if backend == "tensorrt" and not CUDA:
        pytest.skip("TensorRT needs an NVIDIA GPU")
    try:
        sr = resolver(backend, dtype)
    except (RuntimeError, ValueError) as err:  # e.g. no TensorRT, no CUDA provider: said in one line
        pytest.skip(str(err).splitlines()[0])
    lr = torch.rand(1, 3, 128, 128, device=DEVICE) * 2 - 1
    benchmark.group = f"default SR model 128->512 ({DEVICE})"
    benchmark.extra_info.update(
        backend=backend,
        preset="sr-small-x4",
        dtype=dtype,
        input="128x128",
        output="512x512",
        batch=1,
        device=DEVICE,
        threads=torch.get_num_threads(),
    )
    timed(sr.upscale_tensor, lr, rounds=20 if CUDA else 10)
