"""Base-model pre-training for presets without public weights: the autoencoder on HR crops, then the transformer
as a generative flow (conditional flow matching on the linear path) in that autoencoder's latent space.
"""

from __future__ import annotations

import torch
from torch import nn

from flowsr.core import latents
from flowsr.core.autoencoders import latent_of
from flowsr.core.patch_autoencoder import PatchAutoencoder
from flowsr.core.sr_model import OneStepSR

from . import paths


def logit_normal_time(batch: int, generator: torch.Generator, device) -> torch.Tensor:
    """t = sigmoid(n), n ~ N(0, 1): more weight on the middle of the path, where velocity is hardest (SD3)."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device))


DECODER_SIDE = ("decoder", "post_quant_conv")  # the autoencoder modules after the latent (AutoencoderKL has both)


class AutoencoderObjective(nn.Module):
    """Reconstruction (L1 + MSE) of HR crops by the SR model's autoencoder; the rest of the model is frozen.

    A VAE decodes a sample of its posterior and adds a small KL term that keeps the latent well-scaled, weighted
    as LDM weights it: LDM sums the reconstruction over pixels and adds `kl_weight` times the KL summed over latent
    elements; with the reconstruction averaged over pixels here, the KL is divided by the image's element count.
    Without that the KL outweighs reconstruction ~50 000-fold on 128 px crops, the posterior std rises to 0.4 or
    more and the decoder learns from mostly noise. A deterministic autoencoder (`PatchAutoencoder`) has no KL.

    `encoder_only` keeps the decoder frozen too: the encoder is refit to invert the decoder, in the latent space
    the transformer already works in."""

    def __init__(self, model: OneStepSR, kl_weight: float = 1e-6, encoder_only: bool = False):
        super().__init__()
        self.model, self.kl_weight = model, kl_weight
        model.requires_grad_(False)
        model.vae.requires_grad_(True)
        if encoder_only:
            for name in DECODER_SIDE:
                module = getattr(model.vae, name, None)  # AutoencoderKL may go without post_quant_conv
                if module is not None:
                    module.requires_grad_(False)

    def forward(self, hr: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        encoding = self.model.vae.encode(hr)
        posterior = getattr(encoding, "latent_dist", None)
        z = encoding.latent if posterior is None else posterior.sample(generator=generator)
        recon = self.model.vae.decode(z).sample
        l1, mse = (recon - hr).abs().mean(), (recon - hr).pow(2).mean()
        if posterior is None:
            return {"loss": l1 + mse, "l1": l1, "mse": mse}
        kl = posterior.kl().mean()
        return {"loss": l1 + mse + self.kl_weight * kl / hr[0].numel(), "l1": l1, "mse": mse, "kl": kl}


class FlowObjective(nn.Module):
    """Conditional flow matching: v(z_t, t) regresses eps - z_0 on z_t = (1 - t) z_0 + t eps; the VAE is frozen."""

    def __init__(self, model: OneStepSR):
        super().__init__()
        self.model = model
        model.requires_grad_(False)
        model.transformer.requires_grad_(True)

    def forward(self, hr: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            z0 = self.model.encode(hr)
        t = logit_normal_time(z0.shape[0], generator, z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z_t, target = paths.linear_path(z0, noise, t)
        velocity = self.model.velocity(latents.pack(z_t), t, z0.shape[2], z0.shape[3])
        loss = (velocity.float() - latents.pack(target).float()).pow(2).mean()
        return {"loss": loss}


@torch.no_grad()
def narrow_posterior(vae, log_variance: float = -6.0) -> None:
    """Start a fresh VAE with a small posterior std: at log-variance 0 the sampled latent is mostly noise and the
    decoder stalls for hundreds of steps until the encoder learns to shrink it."""
    channels = vae.config.latent_channels
    vae.encoder.conv_out.bias[channels:].fill_(log_variance)


def initialize_autoencoder(vae, crops: torch.Tensor) -> str:
    """The start of autoencoder training: a PatchAutoencoder's PCA fitted on `crops`, a VAE's narrow posterior.
    Returns what was done, for the log."""
    if isinstance(vae, PatchAutoencoder):
        kept = vae.fit_pca(crops)
        return f"PCA of {len(crops)} crops: the latent keeps {100 * kept:.2f}% of the patch variance"
    narrow_posterior(vae)
    return "VAE posterior narrowed (log-variance -6)"


@torch.no_grad()
def calibrate_latents(model: OneStepSR, crops: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Set the VAE's shift/scale so normalized latents have mean 0 and std 1 over `crops`; returns (shift, scale)."""
    raw = torch.cat([latent_of(model.vae.encode(part)).float() for part in crops.split(batch_size)])
    shift, scale = raw.mean().item(), 1.0 / raw.std().item()
    model.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    model.normalization = type(model.normalization)(shift, scale)
    return shift, scale
