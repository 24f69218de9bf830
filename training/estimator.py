"""The strength estimator's objective: the continuum strength an LR image was degraded at, read off the image.

Only the estimator trains; the SR model around it is frozen. L1 regresses the median strength of the inputs that
look alike, so an input whose degradation steps all came out mild reads as mild whatever it was drawn at.
"""

from __future__ import annotations

import torch
from torch import nn

from flowsr.core.sr_model import OneStepSR


class StrengthObjective(nn.Module):
    def __init__(self, model: OneStepSR):
        super().__init__()
        if model.estimator is None:
            raise ValueError("this model has no strength estimator (its preset has one start time for every input)")
        self.model = model
        model.requires_grad_(False)
        model.estimator.requires_grad_(True)

    def forward(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lr, strength = batch
        predicted = self.model.estimate_strength(lr)
        error = (predicted - strength.float()).abs()
        return {"loss": error.mean(), "clean_error": error[strength == 0].mean().nan_to_num(0.0)}
