"""DegFlow's residual autoencoder (RAE): the latent carries the degradation, the HR image carries the content.

`encode(y)` gives a small latent (4 channels, 1/8 size) and skip features (1, 1/2, 1/4 size). `decode(z, skips)`
always takes the skips of the **HR** image and predicts a residual on it, so one latent shape describes every
scale of degradation of the same picture. Built from diffusers blocks; saved and loaded with
`save_pretrained`/`from_pretrained` like every other flowsr component.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
from torch import nn


class Skips(NamedTuple):
    """The HR image and its encoder features at 1, 1/2, 1/4 size: everything the decoder takes besides the latent."""

    image: torch.Tensor
    features: tuple[torch.Tensor, ...]


class ResidualAutoencoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        latent_channels: int = 4,
        norm_num_groups: int = 8,
        latent_shift: float = 0.0,
        latent_scale: float = 1.0,
    ):
        super().__init__()
        channels = list(block_out_channels)
        if len(channels) != 4:
            raise ValueError(f"the RAE has 4 levels (1, 1/2, 1/4, 1/8 size), got block_out_channels={channels}")

        def block(cin, cout):
            return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=None, groups=norm_num_groups)

        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.down = nn.ModuleList(block(channels[i], channels[i]) for i in range(4))
        self.downsample = nn.ModuleList(
            Downsample2D(channels[i], use_conv=True, out_channels=channels[i + 1], padding=1, name="op")
            for i in range(3)
        )
        self.to_latent = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[3]), nn.SiLU(), nn.Conv2d(channels[3], latent_channels, 3, padding=1)
        )
        self.from_latent = nn.Conv2d(latent_channels, channels[3], 3, padding=1)
        self.mid = block(channels[3], channels[3])
        self.upsample = nn.ModuleList(
            Upsample2D(channels[i + 1], use_conv=True, out_channels=channels[i]) for i in range(3)
        )
        self.up = nn.ModuleList(block(2 * channels[i], channels[i]) for i in range(3))
        self.to_image = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]), nn.SiLU(), nn.Conv2d(channels[0], 3, 3, padding=1)
        )
        nn.init.zeros_(self.to_image[-1].weight)  # starts as the identity on the HR image
        nn.init.zeros_(self.to_image[-1].bias)

    stride = 8

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, Skips]:
        """Image in [-1, 1], sides multiples of 8 -> (normalized latent, skips)."""
        if image.shape[-1] % self.stride or image.shape[-2] % self.stride:
            raise ValueError(f"RAE input sides must be multiples of {self.stride}, got {tuple(image.shape[-2:])}")
        hidden, features = self.conv_in(image), []
        for level in range(4):
            hidden = self.down[level](hidden, None)
            if level < 3:
                features.append(hidden)
                hidden = self.downsample[level](hidden)
        latent = (self.to_latent(hidden) - self.config.latent_shift) * self.config.latent_scale
        return latent, Skips(image, tuple(features))

    def decode(self, latent: torch.Tensor, skips: Skips) -> torch.Tensor:
        """Normalized latent + the HR image's skips -> the degraded image at HR size, in [-1, 1] (not clamped)."""
        hidden = self.mid(self.from_latent(latent / self.config.latent_scale + self.config.latent_shift), None)
        for level in (2, 1, 0):
            hidden = self.upsample[level](hidden)
            hidden = self.up[level](torch.cat([hidden, skips.features[level]], dim=1), None)
        return skips.image + self.to_image(hidden)

    def forward(self, degraded: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Reconstruct `degraded` from its own latent and the HR image's skips (the RAE training target)."""
        latent, _ = self.encode(degraded)
        return self.decode(latent, self.encode(hr)[1])
