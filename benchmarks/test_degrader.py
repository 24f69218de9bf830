"""Latency of single-NFE degradation synthesis (RAE encode, one UNet evaluation, RAE decode) per 512² image,
against the multi-step references, small preset with random weights (latency does not depend on the weights)."""

import pytest
import torch
from skimage import data, transform

from flowsr.core.degradation_model import DegradationModel
from flowsr.runtime.degrader import Degrader

SIZE = 512


@pytest.fixture(scope="module")
def photo():
    return (transform.resize(data.astronaut(), (SIZE, SIZE), anti_aliasing=True) * 255).round().astype("uint8")


@pytest.mark.parametrize("solver,steps", [("one-step", 1), ("euler", 8)])
def test_degrade_512(benchmark, photo, solver, steps):
    model = DegradationModel.from_preset("small")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    degrader = Degrader(model, device=device, solver=solver, steps=steps)
    degrader(photo, [3.0])  # warm-up
    degrader.evaluations = 0
    benchmark.extra_info.update(size=SIZE, solver=solver, scales=1)
    benchmark.pedantic(lambda: degrader(photo, [3.0]), rounds=3, iterations=1)
    benchmark.extra_info["nfe_per_image"] = degrader.evaluations / 3
