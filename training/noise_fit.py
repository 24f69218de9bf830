"""`flowsr train degradation noise`: fit a degradation model's pixel noise (`core.noise_model`) to its own residuals.

For HR crops of the training photos at scales spread over (1, s_max]: the true degraded image (the
Real-ESRGAN-style pipeline, seeded per crop, brought to HR size as in training) minus the model's one-step image,
on the LR grid of the scale, high-passed (the grain: the pipeline's JPEG leaves flat regions blotchy at low
frequencies, which white noise would only mimic by being too grainy), over the flattest quarter of the photo's
pixels, where the residual is the degradation's noise rather than the model's error on texture. Per crop that
gives the grain's variance, the share of it common to the three channels and the brightness there; divided by
the share of the generated noise's variance that the same high-pass keeps, it is the variance to generate. Per
scale, variance = level·(base + slope·brightness) is fitted by least squares, spread is the std of
log(variance / fit) across crops, and the fit is divided by E[level] = exp(spread²/2) so that the mean is kept.

The residuals hold some of the network's own error besides the grain it lacks, so the fit alone leaves synthesized
images grainier than the pipeline's (30% at x4 on held-out photos, 32 draws). `calibrate_noise` then rescales
each row of the table so that `flowsr eval degradation`'s noise ratio is 1 on other photos than the fit's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowsr.core.degflow import lr_size, scale_to_time, time_to_scale
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.noise_model import MAX_SPREAD, NoiseModel
from flowsr.core.sr_model import resize_to

from .data import HRCrops
from .degradations import degrade
from .evaluate_degradation import (
    DRAW_SEED_STEP,
    flat_mask,
    flat_noise,
    highpass,
    lr_grid,
    pipeline_draw,
    top_left_crops,
)

SCALES = (1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
MIN_VARIANCE = 1e-8
PROBE_VARIANCE = 1e-4  # small enough that no pixel of the probe is clipped to [-1, 1]
CALIBRATION_DRAWS = 32  # the pipeline's draws are heavy-tailed: 8 draws moved the ratio by up to 0.25 at x4
CALIBRATION_ROUNDS = 2  # the network's own grain adds to the noise's, so one rescaling lands close to 1, two on it
PROBE = NoiseModel(times=[0.0, 1.0], base=[PROBE_VARIANCE] * 2, slope=[0.0, 0.0], gray=[0.0, 0.0], spread=[0.0, 0.0])


def residual_statistics(grain: np.ndarray, brightness: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(variance per channel, share of it common to the channels, mean brightness) of a residual's grain (3, h, w),
    in [-1, 1] units, over `mask`; `brightness` (h, w) in [0, 1] is that of the image the noise will be added to."""
    covariance = np.cov(grain[:, mask])
    variance = float(np.trace(covariance) / 3)
    cross = float((covariance.sum() - np.trace(covariance)) / 6)
    gray = float(np.clip(cross / max(variance, MIN_VARIANCE), 0, 1))
    return variance, gray, float(brightness[mask].mean())


def grain_share(scale: float, size: int, draws: int = 8) -> float:
    """The share of the generated noise's variance that `highpass` keeps on the LR grid of `scale`."""
    flat = torch.zeros(1, 3, size, size)
    kept = [
        highpass(
            lr_grid(PROBE.sample(flat, 0.5, lr_size(size, size, scale), torch.Generator().manual_seed(draw)), scale)
            / 127.5
        )
        .var(axis=(1, 2))
        .mean()
        for draw in range(draws)
    ]
    return float(np.mean(kept) / PROBE_VARIANCE)


def fit_scale(
    variance: Sequence[float], gray: Sequence[float], brightness: Sequence[float]
) -> tuple[float, float, float, float]:
    """(base, slope, gray, spread) from the per-crop statistics at one scale."""
    variance, brightness = np.asarray(variance, dtype=np.float64), np.asarray(brightness, dtype=np.float64)
    design = np.stack([np.ones_like(brightness), brightness], axis=1)
    (base, slope), *_ = np.linalg.lstsq(design, variance, rcond=None)
    if base < 0 or base + slope < 0:  # the straight line leaves the valid range: fall back to a constant
        base, slope = float(variance.mean()), 0.0
    fitted = np.maximum(base + slope * brightness, MIN_VARIANCE)
    spread = float(min(np.log(np.maximum(variance, MIN_VARIANCE) / fitted).std(), MAX_SPREAD))
    mean_level = np.exp(spread**2 / 2)
    return float(base / mean_level), float(slope / mean_level), float(np.mean(gray)), spread


@torch.no_grad()
def fit_noise(
    model: DegradationModel,
    photos: str | Path,
    scales: Sequence[float] = SCALES,
    crops: int = 256,
    crop: int = 128,
    seed: int = 0,
) -> NoiseModel:
    """Fit the noise table at `scales` (time 0, the HR image itself, has none) from `crops` crops per scale."""
    data = HRCrops(photos, crop=crop, seed=seed, repeats=max(1, crops), max_side=1600)
    rng = np.random.default_rng(seed)
    rows = {"times": [0.0], "base": [0.0], "slope": [0.0], "gray": [0.0], "spread": [0.0]}
    for scale in scales:
        r = scale_to_time(scale, model.s_max)
        share = grain_share(scale, crop)
        statistics = []
        for index in range(crops):
            hr = data.hr_crop(index, rng)
            hr_tensor = torch.from_numpy(hr).permute(2, 0, 1)[None] * 2 - 1
            true = torch.from_numpy(degrade(hr, scale, seed=int(rng.integers(2**31)))).permute(2, 0, 1)[None] * 2 - 1
            synthesized = model(hr_tensor, torch.tensor([r])).clamp(-1, 1)
            synthesized_lr = lr_grid(synthesized, scale)
            grain = highpass(lr_grid(resize_to(true, crop, crop), scale) - synthesized_lr) / 127.5
            variance, gray, brightness = residual_statistics(
                grain, synthesized_lr.mean(0) / 255, flat_mask(hr_tensor, scale)
            )
            statistics.append((variance / share, gray, brightness))
        base, slope, gray, spread = fit_scale(*zip(*statistics, strict=True))
        for name, value in zip(
            ("times", "base", "slope", "gray", "spread"), (r, base, slope, gray, spread), strict=True
        ):
            rows[name].append(value)
    return NoiseModel(**rows)


@torch.no_grad()
def calibrate_noise(
    model: DegradationModel, noise: NoiseModel, photos: str | Path, max_side: int = 256, seed: int = 0
) -> NoiseModel:
    """`noise` with each row's base and slope rescaled so that the flat-region grain (`flat_noise`) of the one-step
    image plus the noise matches the pipeline's, as means over the top-left crops of `photos` and CALIBRATION_DRAWS
    draws of each: `flowsr eval degradation`'s noise ratio, brought to 1 at every time of the table."""
    crops = list(top_left_crops(photos, max_side, model.stride))
    draws = [
        (index, hr_tensor, seed + index + DRAW_SEED_STEP * draw)
        for index, (_, _, hr_tensor) in enumerate(crops)
        for draw in range(CALIBRATION_DRAWS)
    ]
    table = noise.to_dict()
    for row, r in enumerate(table["times"]):
        if r == 0:
            continue
        scale = time_to_scale(r, model.s_max)
        true = np.mean(
            [
                flat_noise(pipeline_draw(crops[index][1], scale, draw_seed), hr_tensor, scale)
                for index, hr_tensor, draw_seed in draws
            ]
        )
        network = [model(hr_tensor, torch.tensor([r])).clamp(-1, 1) for _, _, hr_tensor in crops]
        for _ in range(CALIBRATION_ROUNDS):
            current = NoiseModel(**table)
            synthesized = np.mean(
                [
                    flat_noise(
                        current.add_to(
                            network[index],
                            r,
                            lr_size(*hr_tensor.shape[2:], scale),
                            torch.Generator().manual_seed(draw_seed),
                        ),
                        hr_tensor,
                        scale,
                    )
                    for index, hr_tensor, draw_seed in draws
                ]
            )
            factor = float(true / max(synthesized, 1e-12)) ** 2
            table["base"][row] *= factor
            table["slope"][row] *= factor
    return NoiseModel(**table)
