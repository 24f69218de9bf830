"""How degraded an input is, from the whole LR image: the strength that picks the one-step SR's start time.

A tile cannot tell fine texture from noise; the whole picture can (noise, JPEG blocking and blur are the same
everywhere in it). Strided convolutions at the LR resolution (where noise and blocking live; a downscale would
average them away) give, at each of their scales, the log of every channel's mean magnitude over the whole image:
logs, so that the head compares bands by their ratios, which the image's contrast does not change. Beside them,
JPEG's blocking: the log ratio of the pixel differences across the 8-pixel grid to all of them, per axis. A small
MLP maps these to the strength in [0, 1] (0: a clean downscale, 1: heavy degradation). One value per image, so
every tile of a large photo is restored at the same time t.

Without the blocking features the same network did not learn in a thousand steps (its pooled responses follow the
photo's content far more than its degradation); with them it did (docs/experiments/sr-small-gated.md).

Images with a side above `max_side` are seen through a central crop of max_side x max_side whose corner lies on the
8-pixel grid: the same statistics, the same JPEG grid, at a bounded cost.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

JPEG_BLOCK = 8
EPSILON = 1e-3  # under the log: a flat image's energies stay finite


def central_crop(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """The central crop of at most max_side x max_side of a (B, C, H, W) image, its corner on the JPEG grid."""
    height, width = image.shape[2], image.shape[3]
    crop_h, crop_w = min(height, max_side), min(width, max_side)
    top = (height - crop_h) // 2 // JPEG_BLOCK * JPEG_BLOCK
    left = (width - crop_w) // 2 // JPEG_BLOCK * JPEG_BLOCK
    return image[:, :, top : top + crop_h, left : left + crop_w]


def _mean_or_zero(values: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B,): the mean, 0 where N is 0. Sums, not means: ONNX's ReduceMean of nothing is not torch's NaN."""
    return values.sum(dim=1) / torch.ones_like(values).sum(dim=1).clamp(min=1)


def _border_ratio(differences: torch.Tensor) -> torch.Tensor:
    """(B, N) mean |difference| per pixel step along one axis -> log(mean across the 8-pixel block borders) -
    log(mean of all), 0 (no blocking) where the side crosses no border (8 px or fewer)."""
    border = differences[:, JPEG_BLOCK - 1 :: JPEG_BLOCK]
    ratio = torch.log(_mean_or_zero(border) + EPSILON) - torch.log(_mean_or_zero(differences) + EPSILON)
    crossed = torch.ones_like(border).sum(dim=1) > 0  # no branch on the size: exported graphs take any size
    return torch.where(crossed, ratio, torch.zeros_like(ratio))


def blockiness(image: torch.Tensor) -> torch.Tensor:
    """(B, 2): per axis, log(mean |difference| across the 8-pixel block borders) - log(mean |difference|); 0 (no
    blocking) along a side of 8 px or fewer, which crosses no border."""
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().mean(dim=(1, 2))
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().mean(dim=(1, 3))
    return torch.stack([_border_ratio(dx), _border_ratio(dy)], dim=1)


class StrengthEstimator(ModelMixin, ConfigMixin):
    """LR image (B, 3, h, w) in [-1, 1], any size -> degradation strength (B,) in [0, 1]."""

    @register_to_config
    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64), hidden: int = 64, max_side: int = 512):
        super().__init__()
        widths = (3, *channels)
        # the first convolution keeps the resolution: noise and JPEG blocking are single-pixel features
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=1 if index == 0 else 2, padding=1)
            for index, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.head = nn.Sequential(nn.Linear(sum(channels) + 2, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = central_crop(image, self.config.max_side).float()
        features = [blockiness(x)]
        h = x.to(self.convs[0].weight.dtype)
        for conv in self.convs:
            h = conv(h)
            features.append(torch.log(h.float().abs().mean(dim=(2, 3)) + EPSILON))
            h = F.silu(h)
        head = self.head[0].weight.dtype
        return torch.sigmoid(self.head(torch.cat(features, dim=1).to(head))[:, 0]).float()
