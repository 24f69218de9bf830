"""AlloSR² fine-tuning: LoRA on the VAE encoder and the transformer, losses Rec + FATC + ATM.

Each pair starts at the SNR-guided time of its own degradation: the model's start time at the strength the pair was
degraded at (`start_times`, measured per strength), or, where the strength is not known (paired folders), the
pair's own SNR-guided time; a model with one t* starts every pair there.

The decoder stays frozen; z_H comes from the frozen base encoder (the same encoder with its adapters off), or from
a target encoder given apart. That one is needed when the base is itself a merged AlloSR² model: its encoder was
tuned to encode LR images, not to be the decoder's inverse, so HR targets encoded by it decode to a worse image
than the HR itself.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from flowsr.core import flow, latents
from flowsr.core.atomic import atomic_directory
from flowsr.core.autoencoders import latent_of
from flowsr.core.errors import SettingsError
from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR
from flowsr.export.merge import ADAPTER_PARTS, ADAPTER_WEIGHTS, ADAPTERS_JSON

from . import paths

# Attention and MLP projections of the FLUX blocks; convolutions and attention of a VAE's encoder.
TRANSFORMER_TARGETS = (
    r".*(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out))$"
)
ENCODER_TARGETS = r"^encoder\.(conv_in|conv_out|conv1|.*\.(conv1|conv2|conv_shortcut|to_q|to_k|to_v|to_out\.0))$"
# Every convolution of a ConvVelocityModel; every convolution of a GatedConvVelocityModel and the MLP that turns t into
# its modulation (so the fine-tuned model responds to the start times of SR, not only to the generative prior's); a
# PatchAutoencoder's encoder is one 1x1 convolution.
CONV_VELOCITY_TARGETS = r"^(conv_in|convs\.\d+|conv_out)$"
GATED_CONV_VELOCITY_TARGETS = r"^(conv_in|blocks\.\d+\.conv\d|fuse|conv_out|time_mlp\.[02])$"
PATCH_ENCODER_TARGETS = r"^encoder$"


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 64
    alpha: float = 64.0
    transformer_targets: str = TRANSFORMER_TARGETS
    encoder_targets: str = ENCODER_TARGETS


LORA_PRESETS = {
    "tiny": LoraSettings(
        rank=4, alpha=4.0, transformer_targets=GATED_CONV_VELOCITY_TARGETS, encoder_targets=PATCH_ENCODER_TARGETS
    ),
    "tiny-kl": LoraSettings(rank=4, alpha=4.0),
    "small": LoraSettings(
        rank=64, alpha=64.0, transformer_targets=CONV_VELOCITY_TARGETS, encoder_targets=PATCH_ENCODER_TARGETS
    ),
    "small-gated": LoraSettings(
        rank=32, alpha=32.0, transformer_targets=GATED_CONV_VELOCITY_TARGETS, encoder_targets=PATCH_ENCODER_TARGETS
    ),
    "flux-dev": LoraSettings(rank=64, alpha=64.0),  # the paper's setting
}


RELATIVE_FLOOR = 1e-3  # input errors below this (flat, clean crops) count as this, so no sample dominates


@dataclass(frozen=True)
class LossWeights:
    """Each term can be switched off (weight 0): the paper's ablations are fatc=0 ("w/o FATC") and atm=0.

    `pixel` adds an L1 term on the decoded image to L_rec: where LPIPS backbone weights are absent this is the term
    that reaches pixels, and for a lossless autoencoder it is the whole of L_rec. With `pixel_log_floor` > 0 the
    term is the mean over samples of log(L1 + floor) instead: each sample's gradient is scaled by 1 / (its error +
    floor), so a flat, nearly restored crop counts as much as a heavily degraded one, as it does in a mean PSNR.

    `latent_relative` is L_rec's MSE divided, per sample, by that sample's input error mean((z_L - z_H)²) (held
    constant, floored at RELATIVE_FLOOR): the share of the input's error left over. Plain MSE is dominated by
    heavily degraded samples, whose errors are several times larger, and a model trained on it smooths clean
    inputs; the relative form weighs every sample by how much it can gain, as mean PSNR gain over the input does.
    """

    latent_mse: float = 1.0
    latent_relative: float = 0.0
    lpips: float = 0.0
    pixel: float = 0.0
    pixel_log_floor: float = 0.0
    fatc: float = 1.0
    atm: float = 1.0


def add_lora(model: OneStepSR, settings: LoraSettings, seed: int = 0) -> None:
    """Freeze the model, then add trainable LoRA adapters (peft, through diffusers) to the encoder and transformer.
    Their random A matrices come from `seed`, not the global generator, so a resumed run starts where a straight one
    did."""
    model.requires_grad_(False)
    common = {"r": settings.rank, "lora_alpha": settings.alpha, "init_lora_weights": True}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.transformer.add_adapter(LoraConfig(target_modules=settings.transformer_targets, **common))
        model.vae.add_adapter(LoraConfig(target_modules=settings.encoder_targets, **common))


@contextlib.contextmanager
def base_encoder(model: OneStepSR):
    """The frozen base encoder E_phi: the LoRA encoder with its adapters switched off."""
    model.vae.disable_adapters()
    try:
        yield
    finally:
        model.vae.enable_adapters()


def check_target_encoder(model: OneStepSR, target: nn.Module) -> None:
    """HR targets from `target` (an autoencoder) are only meaningful in `model`'s latent space: the same decoder
    (up to float16 storage: a recipe's model/ is the float16 copy of what the flow prior's decoder is in float32)."""
    mine, theirs = model.vae.decoder.state_dict(), target.decoder.state_dict()
    if mine.keys() != theirs.keys() or not all(torch.equal(mine[k].half(), theirs[k].half()) for k in mine):
        raise SettingsError(
            "the target encoder's autoencoder has another decoder than the model's; pass the model the "
            "autoencoder was trained in (e.g. the flow prior)"
        )


class AlloSR2Objective(nn.Module):
    """One training step's losses for a batch (LR resized to HR size, HR), both in [-1, 1].

    `target_vae`, if given, encodes the HR targets (frozen); otherwise the base encoder does."""

    def __init__(
        self,
        model: OneStepSR,
        weights: LossWeights = LossWeights(),
        lpips: nn.Module | None = None,
        target_vae: nn.Module | None = None,
    ):
        super().__init__()
        if weights.lpips and lpips is None:
            raise SettingsError("the LPIPS term needs an LPIPS network; load one or set its weight to 0")
        if target_vae is not None:
            check_target_encoder(model, target_vae)
            target_vae.requires_grad_(False).eval()
        self.model, self.weights, self.lpips, self.target_vae = model, weights, lpips, target_vae

    @torch.no_grad()
    def target_latent(self, hr: torch.Tensor) -> torch.Tensor:
        """z_H: the HR image encoded by the target encoder, or by the base encoder (adapters off)."""
        if self.target_vae is not None:
            return self.model.normalization.normalize(latent_of(self.target_vae.encode(hr)))
        with base_encoder(self.model):
            return self.model.encode(hr)

    def velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return latents.unpack(self.model.velocity(latents.pack(z), t, z.shape[2], z.shape[3]), z.shape[2], z.shape[3])

    def start_time(self, strength: torch.Tensor, z_lr: torch.Tensor, z_hr: torch.Tensor) -> torch.Tensor:
        """Each pair's start time: the model's at its strength, or its own SNR-guided one where that is unknown."""
        t = self.model.start_time(strength.nan_to_num(0.0))
        if self.model.start_times.numel() == 0:
            return t
        return torch.where(strength.isnan(), flow.pair_start_time(z_lr.detach(), z_hr), t)

    def forward(self, batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lr, hr, strength = batch
        model, weights = self.model, self.weights
        z_lr = model.encode(lr)
        z_hr = self.target_latent(hr)
        size = z_lr.shape[0]
        t_star = self.start_time(strength.to(z_lr.device), z_lr, z_hr)
        z_hr_hat = flow.one_step_sr(z_lr, self.velocity(z_lr, t_star), t_star)

        error = (z_hr_hat.float() - z_hr.float()).pow(2).flatten(1).mean(dim=1)
        input_error = (z_lr.detach().float() - z_hr.float()).pow(2).flatten(1).mean(dim=1)
        losses = {"latent_mse": error.mean()}
        if weights.latent_relative:
            losses["latent_relative"] = (error / input_error.clamp_min(RELATIVE_FLOOR)).mean()
        if weights.lpips or weights.pixel:
            decoded = model.decode(model.normalization.denormalize(z_hr_hat)).float()
            if weights.pixel:
                per_sample = (decoded - hr.float()).abs().flatten(1).mean(dim=1)
                floor = weights.pixel_log_floor
                losses["pixel"] = torch.log(per_sample + floor).mean() if floor else per_sample.mean()
            if weights.lpips:
                losses["lpips"] = self.lpips(decoded, hr.float()).mean()

        t = torch.rand(size, generator=generator, device=z_lr.device) * t_star
        z_sr, target = paths.fatc_point(z_hr, z_lr, t, t_star)
        v_sr = None
        if weights.fatc:
            v_sr = self.velocity(z_sr, t)
            losses["fatc"] = (v_sr.float() - target.float()).pow(2).mean()
        if weights.atm:
            noise = torch.randn(z_hr.shape, generator=generator, device=z_hr.device, dtype=z_hr.dtype)
            z_gen = paths.interpolate(z_hr, noise, t)
            with torch.no_grad():
                v_sr = self.velocity(z_sr, t) if v_sr is None else v_sr
                v_gen = self.velocity(z_gen, t)
            direction = flow.atm_direction(z_sr, z_gen, v_sr, v_gen, t, z_hr_hat, z_hr)
            # Surrogate whose parameter gradient is direction . dz_H_hat/dtheta (per element, averaged).
            losses["atm"] = (direction.detach().float() * z_hr_hat.float()).mean()
        scale = {
            "latent_mse": weights.latent_mse,
            "latent_relative": weights.latent_relative,
            "lpips": weights.lpips,
            "pixel": weights.pixel,
            "fatc": weights.fatc,
            "atm": weights.atm,
        }
        losses["loss"] = sum(scale[name] * value for name, value in losses.items())
        # Logged, not optimized: how much closer to z_H the one step got than z_L was, in dB.
        losses["gain_db"] = 10 * torch.log10(input_error.mean() / losses["latent_mse"].detach().clamp_min(1e-12))
        return losses


@torch.no_grad()
def estimate_t_star(model: OneStepSR, pairs, batch_size: int = 8, grid_size: int = 1000) -> float:
    """SNR-guided t* from (LR at HR size, HR, strength) pairs, both images encoded by the frozen encoder."""
    signals, degradations = [], []
    for start in range(0, len(pairs), batch_size):
        lr, hr, _ = (
            torch.stack(part)
            for part in zip(*(pairs[i] for i in range(start, min(start + batch_size, len(pairs)))), strict=True)
        )
        signal, degradation = flow.snr_statistics(model.encode(lr), model.encode(hr))
        signals.append(signal)
        degradations.append(degradation)
    return flow.snr_start_time(torch.cat(signals), torch.cat(degradations), grid_size)


def save_adapters(model: OneStepSR, directory: str | Path, manifest: Manifest) -> Path:
    """LoRA adapters as peft folders (`transformer/`, `vae/`: adapter_config.json + adapter_model.safetensors)
    plus `adapters.json` (t*, preset), written to a temporary sibling and renamed into place."""
    with atomic_directory(directory) as staging:
        for part, module in zip(ADAPTER_PARTS, (model.transformer, model.vae), strict=True):
            (staging / part).mkdir()
            state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(module).items()}
            safetensors.torch.save_file(state, staging / part / ADAPTER_WEIGHTS)
            module.peft_config["default"].save_pretrained(staging / part)
        (staging / ADAPTERS_JSON).write_text(
            json.dumps({"t_star": model.t_star, "preset": manifest.preset}, indent=2) + "\n"
        )
    return directory
