"""The `small` preset's autoencoder: the principal components of pixel patches.

An image is cut into `patch_size`² patches (pixel-unshuffle); a 1x1 convolution maps each patch to
`latent_channels` numbers and another maps them back. `fit_pca` sets the two to the principal components of
patches from training images, so the code is the best linear one of its size. With as many latent channels as a
patch has values (2x2x3 patches to 12 channels in the small preset) the code is lossless: an orthonormal change of
basis of the pixels, so the velocity network's capacity goes to restoring detail and none is spent, or lost, in
an autoencoder. Every latent pixel depends on its own patch alone, so a tile encodes exactly as the whole image.

Orthonormal components make latent distances pixel distances (up to the latent scale): a latent-space loss is
a pixel-space loss. `encode`/`decode` follow diffusers' autoencoders (`.latent` of the encoding, `.sample` of the
decoding), with output types of their own: diffusers' module for them imports every UNet and transformer it has,
which would double a serving process's start-up. The model saves and loads with
`save_pretrained`/`from_pretrained`, and takes LoRA adapters through diffusers' `PeftAdapterMixin`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class PatchEncoding(BaseOutput):
    latent: torch.Tensor


@dataclass
class PatchDecoding(BaseOutput):
    sample: torch.Tensor


class PatchAutoencoder(ModelMixin, ConfigMixin, PeftAdapterMixin):
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 2,
        latent_channels: int = 12,
        shift_factor: float = 0.0,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        patch_dim = in_channels * patch_size**2
        if not 0 < latent_channels <= patch_dim:
            raise ValueError(
                f"latent_channels must lie in [1, {patch_dim}] for {patch_size}x{patch_size} patches, "
                f"got {latent_channels}"
            )
        self.encoder = nn.Conv2d(patch_dim, latent_channels, 1)
        self.decoder = nn.Conv2d(latent_channels, patch_dim, 1)

    def encode(self, image: torch.Tensor, return_dict: bool = True) -> PatchEncoding | tuple[torch.Tensor]:
        """Image (B, C, H, W), sides multiples of `patch_size` -> latent (B, latent_channels, H/p, W/p)."""
        size = self.config.patch_size
        if image.shape[-1] % size or image.shape[-2] % size:
            raise ValueError(f"image sides must be multiples of the patch size {size}, got {tuple(image.shape[-2:])}")
        latent = self.encoder(F.pixel_unshuffle(image, size))
        return PatchEncoding(latent=latent) if return_dict else (latent,)

    def decode(self, latent: torch.Tensor, return_dict: bool = True) -> PatchDecoding | tuple[torch.Tensor]:
        image = F.pixel_shuffle(self.decoder(latent), self.config.patch_size)
        return PatchDecoding(sample=image) if return_dict else (image,)

    def forward(self, image: torch.Tensor, return_dict: bool = True) -> PatchDecoding | tuple[torch.Tensor]:
        return self.decode(self.encode(image).latent, return_dict=return_dict)

    @torch.no_grad()
    def fit_pca(self, images: torch.Tensor) -> float:
        """Set encoder and decoder to the principal components of the patches of `images` (B, C, H, W).
        Returns the share of patch variance the latent keeps (1 for a lossless code)."""
        patches = F.pixel_unshuffle(images.double(), self.config.patch_size).permute(0, 2, 3, 1).flatten(0, 2)
        mean = patches.mean(dim=0)
        centered = patches - mean
        variances, vectors = torch.linalg.eigh(centered.T @ centered / len(patches))  # ascending
        basis = vectors[:, -self.config.latent_channels :].flip(1).T  # (latent, patch_dim), strongest first
        self.encoder.weight.copy_(basis[:, :, None, None])
        self.encoder.bias.copy_(-(basis @ mean))
        self.decoder.weight.copy_(basis.T[:, :, None, None])
        self.decoder.bias.copy_(mean)
        return float(variances[-self.config.latent_channels :].sum() / variances.sum())
