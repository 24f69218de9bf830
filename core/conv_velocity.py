"""The `small` preset's velocity network: 3x3 convolutions on the token grid, modulated by the time t.

FLUX's transformer sees one token per 2x2 latent patch; so does this network, with the tokens laid out as an image
(the token grid is the latent pixel-unshuffled by 2, channel c*4 + dy*2 + dx, as `latents.pack` orders it). With
the small preset's 2x2 patch autoencoder that grid is a quarter of the image size: the LR resolution at x4, where a
compact network spends all of its capacity on pixels rather than on 16x16-pixel tokens. Plain convolutions and
PReLU, no normalization and no attention: the fastest layers on CPUs and in TensorRT, and a tile gives the whole
image's result wherever the receptive field fits inside it.

The time t enters as in FLUX: a sinusoidal embedding and an MLP that scale and shift the features (once, after the
first convolution). The last convolution starts at zero, so the untrained velocity is zero and the one Euler step
returns its input latent (the bicubic image) unchanged.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from . import latents


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as FLUX scales its timestep), (B,) -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ConvVelocityModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """v(z_t, t) on packed tokens (B, N, in_channels) of a height x width latent; LoRA through diffusers' peft mixin."""

    @register_to_config
    def __init__(self, in_channels: int = 48, channels: int = 64, num_layers: int = 12, time_embedding_dim: int = 64):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embedding_dim, channels), nn.SiLU(), nn.Linear(channels, 2 * channels)
        )
        self.act_in = nn.PReLU(channels)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(num_layers))
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(num_layers))
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        # He initialization for PReLU's 0.25 slope: the signal keeps its scale through depth
        for conv in (self.conv_in, *self.convs):
            nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        # identity modulation, zero velocity: the model starts as bicubic
        for layer in (self.time_mlp[-1], self.conv_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = latents.token_grid(tokens, height, width)
        scale, shift = self.time_mlp(
            timestep_embedding(timestep, self.config.time_embedding_dim).to(tokens.dtype)
        ).chunk(2, dim=1)
        h = self.act_in(self.conv_in(grid) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        for conv, act in zip(self.convs, self.acts, strict=True):
            h = act(conv(h))
        return latents.grid_tokens(self.conv_out(h))
