"""`flowsr train noise`: fit a degradation model's pixel noise (`core.noise_model`) to its own residuals.

For HR crops of the training photos at scales spread over (1, s_max]: the true degraded image (the
Real-ESRGAN-style pipeline, seeded per crop, brought to HR size as in training) minus the model's one-step image,
on the LR grid of the scale, high-passed (the grain: the pipeline's JPEG leaves flat regions blotchy at low
frequencies, which white noise would only mimic by being too grainy), over the flattest quarter of the photo's
pixels, where the residual is the degradation's noise rather than the model's error on texture. Per crop that
gives the grain's variance, the share of it common to the three channels and the brightness there; divided by
the share of the generated noise's variance that the same high-pass keeps, it is the variance to generate. Per
scale, variance = level·(base + slope·brightness) is fitted by least squares, spread is the std of
log(variance / fit) across crops, and the fit is divided by E[level] = exp(spread²/2) so that the mean is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowsr.core.degflow import lr_size, scale_to_time
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.noise_model import MAX_SPREAD, NoiseModel
from flowsr.core.sr_model import resize_to

from .data import HRCrops
from .degradations import degrade
from .evaluate_degradation import flat_mask, highpass, lr_grid

SCALES = (1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
MIN_VARIANCE = 1e-8
PROBE_VARIANCE = 1e-4  # small enough that no pixel of the probe is clipped to [-1, 1]
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
    kept = [highpass(lr_grid(PROBE.sample(flat, 0.5, lr_size(size, size, scale), torch.Generator().manual_seed(draw)), scale) / 127.5).var(axis=(1, 2)).mean()
            for draw in range(draws)]
    return float(np.mean(kept) / PROBE_VARIANCE)


def fit_scale(variance: Sequence[float], gray: Sequence[float], brightness: Sequence[float]) -> tuple[float, float, float, float]:
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
def fit_noise(model: DegradationModel, photos: str | Path, scales: Sequence[float] = SCALES, crops: int = 256, crop: int = 128,
              seed: int = 0) -> NoiseModel:
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
            variance, gray, brightness = residual_statistics(grain, synthesized_lr.mean(0) / 255, flat_mask(hr_tensor, scale))
            statistics.append((variance / share, gray, brightness))
        base, slope, gray, spread = fit_scale(*zip(*statistics))
        for name, value in zip(("times", "base", "slope", "gray", "spread"), (r, base, slope, gray, spread)):
            rows[name].append(value)
    return NoiseModel(**rows)
