"""Wavelet color fix: the restored image's fine detail on the input's coarse colour and brightness.

A latent model decodes its colours through an autoencoder, and a lossy one (a VAE) shifts them a little. The
bicubic-resized input carries the right low frequencies, so the output takes the restored image's high-frequency
bands and the input's low-frequency residual, as StableSR's wavelet color fix does. With the small preset's
lossless autoencoder the fix only ties the result's coarse colours to the input's. The decomposition is an à trous
wavelet: `levels` passes of a 3x3 binomial kernel, dilated 1, 2, 4, ...

The low-pass is linear, so the fix is one low-pass of the difference, `restored + lowpass(reference - restored)`.
Each pass is the binomial [1, 2, 1] / 4 along rows, then along columns, as shifted slices and adds: on a CPU a
dilated depthwise convolution of three channels costs many times that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_LEVELS = 4  # dilations 1, 2, 4, 8: the input gives the result its features coarser than about 16 pixels
MAX_LEVELS = 8


def binomial_pass(image: torch.Tensor, dilation: int) -> torch.Tensor:
    """(B, C, H, W) -> the 3x3 binomial kernel with `dilation`, edges replicated, separably as slices."""
    padded = F.pad(image, (dilation,) * 4, mode="replicate")
    d = dilation
    rows = padded[..., : -2 * d] + 2 * padded[..., d:-d] + padded[..., 2 * d :]
    return (rows[..., : -2 * d, :] + 2 * rows[..., d:-d, :] + rows[..., 2 * d :, :]) / 16


def wavelet_lowpass(image: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """(B, C, H, W) -> its low-frequency residual after `levels` dilated binomial passes (replicate padding)."""
    if levels < 1:
        raise ValueError(f"the wavelet color fix needs at least 1 level, got {levels}")
    for level in range(levels):
        image = binomial_pass(image, 2**level)
    return image


def wavelet_color_fix(
    restored: torch.Tensor, reference: torch.Tensor, levels: int = DEFAULT_LEVELS, band: int = 0
) -> torch.Tensor:
    """High frequencies of `restored`, low frequencies of `reference` (same shape, e.g. the bicubic input).

    `band` > 0: computed `band` rows at a time, each with the 2^levels - 1 rows around it that the passes reach, and
    written into `restored` in place: the same result without full-size temporaries (a 4096² image's would be
    several times its own size). A band's fix is written only after the next band has read its rows."""
    if restored.shape != reference.shape:
        raise ValueError(
            f"color fix needs images of one shape, got {tuple(restored.shape)} and {tuple(reference.shape)}"
        )
    if not band:
        return restored + wavelet_lowpass(reference.to(restored.dtype) - restored, levels)
    halo, height = 2**levels - 1, restored.shape[-2]
    if band <= halo:
        raise ValueError(f"color fix bands of {band} rows are too thin for {levels} levels; use more than {halo}")
    pending = None
    for top in range(0, height, band):
        low, high = max(0, top - halo), min(height, top + band + halo)
        difference = reference[..., low:high, :].to(restored.dtype) - restored[..., low:high, :]
        fix = wavelet_lowpass(difference, levels)[..., top - low : top - low + band, :]
        if pending is not None:
            restored[..., pending[0] : pending[0] + band, :] += pending[1]
        pending = (top, fix)
    restored[..., pending[0] : pending[0] + band, :] += pending[1]
    return restored
