"""The `small-gated` preset's velocity network: gated blocks of 3x3 convolutions on the token grid, modulated by t.

The tokens are laid out as an image (the latent pixel-unshuffled by 2, as `latents.pack` orders it); with the
preset's 2x2 patch autoencoder that grid is the LR resolution at x4, so every multiply-add goes to LR pixels
and the output's 48 channels are the 4x4 sub-pixels of each (a pixel shuffle, by the unpacking).

Each block is three 3x3 convolutions and a parameter-free attention: the block's output h gates its input,
`2 sigmoid(h) * x + h`, which costs no weights and lets a block pass texture where it is confident and suppress it
where it is not. At initialization (h near 0) a block is the identity, so the signal and its gradient reach every
block from the first step; a gate that multiplies the input by `sigmoid(h) - 1/2` instead (SPAN's) starts near
zero and barely trained in the first thousand steps on a CPU. Block outputs and the first features are fused by
a 1x1 convolution, so the last layer sees both the input's fine structure and the deep features.

The time t tells the network how far its input is from the HR image (t grows with the input's degradation), so
each block's first convolution is scaled and shifted by an MLP of t's sinusoidal embedding: one network holds a
sharpening behaviour for clean inputs and a restoring one for degraded inputs, and t selects between them. The
last convolution starts at zero, so the untrained velocity is zero and the Euler step returns the bicubic image.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F

from . import latents
from .conv_velocity import timestep_embedding


class GatedBlock(nn.Module):
    """Three 3x3 convolutions, SiLU between them, t's scale and shift after the first, the parameter-free gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(x) * (1 + scale) + shift)
        h = self.conv3(F.silu(self.conv2(h)))
        return 2 * torch.sigmoid(h) * x + h


class GatedConvVelocityModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """v(z_t, t) on packed tokens (B, N, in_channels) of a height x width latent; LoRA through diffusers' peft mixin."""

    @register_to_config
    def __init__(self, in_channels: int = 48, channels: int = 48, num_blocks: int = 4, time_embedding_dim: int = 64):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embedding_dim, channels), nn.SiLU(), nn.Linear(channels, 2 * channels * num_blocks)
        )
        self.blocks = nn.ModuleList(GatedBlock(channels) for _ in range(num_blocks))
        self.fuse = nn.Conv2d(2 * channels, channels, 1)
        self.conv_out = nn.Conv2d(channels, in_channels, 3, padding=1)
        # identity modulation, zero velocity: the model starts as bicubic
        for layer in (self.time_mlp[-1], self.conv_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = latents.token_grid(tokens, height, width)
        embedding = timestep_embedding(timestep, self.config.time_embedding_dim).to(tokens.dtype)
        modulation = self.time_mlp(embedding)[:, :, None, None].chunk(2 * len(self.blocks), dim=1)
        features = self.conv_in(grid)
        h = features
        for index, block in enumerate(self.blocks):
            h = block(h, modulation[2 * index], modulation[2 * index + 1])
        h = self.fuse(torch.cat([features, h], dim=1))
        return latents.grid_tokens(self.conv_out(h))
