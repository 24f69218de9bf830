"""Latency of SuperResolver end to end (resize, encode, one NFE, decode) at 128x128 -> 512x512."""

import pytest
import torch

from flowsr.runtime.super_resolver import SuperResolver

DEVICES = ["cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_super_resolver_128_to_512(benchmark, timed, preset, device):
    resolver = SuperResolver.from_preset(preset, scale=4, device=device)
    lr = torch.rand(1, 3, 128, 128, device=device) * 2 - 1
    benchmark.group = f"SuperResolver 128->512 ({device})"
    benchmark.extra_info.update(preset=preset, dtype=str(resolver.dtype), input="1x3x128x128", output="1x3x512x512")
    timed(resolver.upscale_tensor, lr)
