"""The SR model's autoencoder behind one small interface: build from a config, load a saved folder, the
deterministic latent of an encoding, the downsampling factor.

Two kinds satisfy it, both diffusers models with `encode`/`decode`: `AutoencoderKL` (FLUX's VAE; the
`flux-dev` and `tiny` presets), whose latent is its posterior's mode, and `PatchAutoencoder` (the `small`
preset), whose latent is deterministic. A saved folder names its class in `config.json` (`_class_name`).
`AutoencoderKL` is imported when a model uses it: diffusers' import of it pulls in every UNet and transformer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .patch_autoencoder import PatchAutoencoder, PatchEncoding

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    Autoencoder = AutoencoderKL | PatchAutoencoder

AUTOENCODERS = ("AutoencoderKL", "PatchAutoencoder")


def autoencoder_class(name: str) -> type[Autoencoder]:
    if name == "PatchAutoencoder":
        return PatchAutoencoder
    if name == "AutoencoderKL":
        from diffusers import AutoencoderKL

        return AutoencoderKL
    raise ValueError(f"unknown autoencoder class {name!r}; flowsr knows {', '.join(AUTOENCODERS)}")


def build_autoencoder(class_name: str, config: dict) -> Autoencoder:
    return autoencoder_class(class_name).from_config(config)


def load_autoencoder(folder: str | Path, dtype: torch.dtype = torch.float32) -> Autoencoder:
    """`from_pretrained` of the class that `folder/config.json` names (safetensors only)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return autoencoder_class(config.get("_class_name")).from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)


def downsample_factor(class_name: str, config) -> int:
    """Image pixels per latent pixel along each side."""
    if autoencoder_class(class_name) is PatchAutoencoder:
        return int(config["patch_size"])
    return 2 ** (len(config["block_out_channels"]) - 1)


def latent_of(encoding) -> torch.Tensor:
    """The latent an `encode` output stands for: a deterministic latent, or the posterior's mode (no sampling)."""
    if isinstance(encoding, PatchEncoding):
        return encoding.latent
    return encoding.latent_dist.mode()
