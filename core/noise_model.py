"""The degradation model's pixel noise: what its latent cannot carry.

The RAE's 4-channel latent at 1/8 size keeps only part of a degraded image's noise (its own reconstruction of a
true degraded image keeps about half of the flat-region noise at x2), and a flow from the HR latent gives one
image per scale. So the noise of a synthesized image is added in pixels, after decoding, by a small fitted
model, and each seed gives another draw:

- white Gaussian noise on the LR grid of the scale (where a camera or the pipeline adds it), a share `gray` of
  its variance common to the three channels;
- brought to HR size as the images are (bicubic) and rescaled to unit variance;
- times sigma, with sigma^2 = level * (base + slope * brightness): brightness in [0, 1] (shot noise grows with
  it), and level = exp(spread * N(0, 1)) drawn per image and sample, since one draw of a degradation is noisier
  or cleaner than the next.

The four parameters are tabulated at times r in [0, 1] and interpolated linearly; `flowsr train degradation noise` fits
them to the model's own residuals against the degradations it learned.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ModelDirError

FIELDS = ("times", "base", "slope", "gray", "spread")
MAX_SPREAD = 3.0


@dataclass(frozen=True)
class NoiseModel:
    times: list[float]
    base: list[float]  # sigma^2 at brightness 0, in [-1, 1] image units squared
    slope: list[float]  # its growth per unit brightness
    gray: list[float]  # share of the variance common to the channels, in [0, 1]
    spread: list[float]  # std of log(level) across draws

    @classmethod
    def from_dict(cls, values: dict, path: str = "noise") -> NoiseModel:
        """From a manifest's `noise` object, checked: one ModelDirError naming what is unusable."""

        def fail(why: str) -> ModelDirError:
            return ModelDirError(
                f"{path}: {why}; re-fit it with `flowsr train degradation noise` or re-create the model directory"
            )

        if set(values) != set(FIELDS):
            raise fail(f"noise must have exactly the fields {', '.join(FIELDS)}")
        columns = {}
        for name in FIELDS:
            column = values[name]
            if not isinstance(column, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in column
            ):
                raise fail(f"noise.{name} must be a list of finite numbers")
            columns[name] = [float(v) for v in column]
        times = columns["times"]
        if len(times) < 2 or times[0] != 0.0 or times[-1] != 1.0 or any(b <= a for a, b in itertools.pairwise(times)):
            raise fail("noise.times must increase from 0 to 1")
        if any(len(column) != len(times) for column in columns.values()):
            raise fail("the noise columns must be as long as noise.times")
        base, slope, gray, spread = (columns[name] for name in FIELDS[1:])
        if (
            any(b < 0 or b + s < 0 for b, s in zip(base, slope, strict=True))
            or any(not 0 <= g <= 1 for g in gray)
            or any(not 0 <= s <= MAX_SPREAD for s in spread)
        ):
            raise fail(f"noise variances must be >= 0, gray shares in [0, 1] and spreads in [0, {MAX_SPREAD:g}]")
        return cls(**columns)

    def to_dict(self) -> dict:
        return asdict(self)

    def at(self, r: float) -> tuple[float, float, float, float]:
        """(base, slope, gray, spread) at time r."""
        return tuple(float(np.interp(r, self.times, getattr(self, name))) for name in FIELDS[1:])

    def sample(
        self, image: torch.Tensor, r: float, lr_size: tuple[int, int], generator: torch.Generator
    ) -> torch.Tensor:
        """Noise for one synthesized image (1, 3, H, W) in [-1, 1] at time r, drawn on the LR grid `lr_size`."""
        base, slope, gray, spread = self.at(r)
        height, width = image.shape[2:]
        shared = torch.randn(1, 1, *lr_size, generator=generator)
        own = torch.randn(1, 3, *lr_size, generator=generator)
        level = math.exp(spread * torch.randn((), generator=generator).item())
        white = math.sqrt(gray) * shared + math.sqrt(1 - gray) * own
        noise = F.interpolate(white, size=(height, width), mode="bicubic", align_corners=False)
        noise.div_(noise.std().clamp_min(1e-12))
        # sigma = sqrt(level * (base + slope * brightness)), in place: a 4096² image needs no extra full-size copies
        sigma = image.float().mean(dim=1, keepdim=True).cpu().add_(1).div_(2).clamp_(0, 1)
        sigma.mul_(slope).add_(base).mul_(level).clamp_(min=0).sqrt_()
        return noise.mul_(sigma).to(image.device, image.dtype)

    def add_to(
        self, image: torch.Tensor, r: float, lr_size: tuple[int, int], generator: torch.Generator
    ) -> torch.Tensor:
        """`image` plus one draw of `sample`, clipped to [-1, 1]."""
        return self.sample(image, r, lr_size, generator).add_(image).clamp_(-1, 1)
