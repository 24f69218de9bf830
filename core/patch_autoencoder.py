"""The `small` preset's autoencoder: PCA of pixel patches plus small convolutional corrections.

An image is cut into `patch_size`² patches (pixel-unshuffle); a 1x1 convolution maps each patch to
`latent_channels` numbers and back. `fit_pca` sets those two maps to the principal components of patches
from training images, so the untrained model is already the best linear code of its size (8x8x3 patches to
64 numbers: ~39 dB on held-out photos). Beside each map, a small convolutional branch on the latent grid,
whose last layer starts at zero, learns what the linear code misses. There is no normalization layer, so a
tile gives the same result as the whole image wherever the branches' 3x3 receptive fields fit inside it.

Orthonormal components make latent distances pixel distances (up to the latent scale): a latent-space loss is
a pixel-space loss on what the code can represent. `encode`/`decode` follow diffusers' autoencoders
(`EncoderOutput.latent`, `DecoderOutput.sample`); the model saves and loads with `save_pretrained`/
`from_pretrained`, and takes LoRA adapters through diffusers' `PeftAdapterMixin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PatchCoder(nn.Module):
    """A 1x1 linear map (the PCA basis once fitted) plus a conv branch whose last layer starts at zero."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_in = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.conv1(F.silu(self.conv_in(x))))
        return self.projection(x) + self.conv_out(hidden)


class PatchAutoencoder(ModelMixin, ConfigMixin, PeftAdapterMixin):
    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 8,
        latent_channels: int = 64,
        hidden_channels: int = 128,
        shift_factor: float = 0.0,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        patch_dim = in_channels * patch_size**2
        if not 0 < latent_channels <= patch_dim:
            raise ValueError(f"latent_channels must lie in [1, {patch_dim}] for {patch_size}x{patch_size} patches, got {latent_channels}")
        self.encoder = PatchCoder(patch_dim, latent_channels, hidden_channels)
        self.decoder = PatchCoder(latent_channels, patch_dim, hidden_channels)

    def encode(self, image: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """Image (B, C, H, W), sides multiples of `patch_size` -> latent (B, latent_channels, H/p, W/p)."""
        size = self.config.patch_size
        if image.shape[-1] % size or image.shape[-2] % size:
            raise ValueError(f"image sides must be multiples of the patch size {size}, got {tuple(image.shape[-2:])}")
        latent = self.encoder(F.pixel_unshuffle(image, size))
        return EncoderOutput(latent=latent) if return_dict else (latent,)

    def decode(self, latent: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        image = F.pixel_shuffle(self.decoder(latent), self.config.patch_size)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, image: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        return self.decode(self.encode(image).latent, return_dict=return_dict)

    @torch.no_grad()
    def fit_pca(self, images: torch.Tensor) -> float:
        """Set both projections to the principal components of the patches of `images` (B, C, H, W); the branches
        are untouched (zero at init). Returns the share of patch variance the latent keeps."""
        patches = F.pixel_unshuffle(images.double(), self.config.patch_size).permute(0, 2, 3, 1).flatten(0, 2)
        mean = patches.mean(dim=0)
        centered = patches - mean
        variances, vectors = torch.linalg.eigh(centered.T @ centered / len(patches))  # ascending
        basis = vectors[:, -self.config.latent_channels :].flip(1).T  # (latent, patch_dim), strongest first
        encoder, decoder = self.encoder.projection, self.decoder.projection
        encoder.weight.copy_(basis[:, :, None, None])
        encoder.bias.copy_(-(basis @ mean))
        decoder.weight.copy_(basis.T[:, :, None, None])
        decoder.bias.copy_(mean)
        return float(variances[-self.config.latent_channels :].sum() / variances.sum())
