"""Model presets: diffusers configurations of the autoencoder and the velocity network.

`small` is the size flowsr trains and ships, `flux-dev` is the exact FLUX.1-dev configuration (its weights load
from a local diffusers folder); `tiny` and `tiny-kl` are the two in miniature, for tests.

`small` keeps the one-step flow (encode, one velocity evaluation, Euler step, decode) but spends its capacity where a
CPU-sized model gains most, on pixels: its autoencoder is the lossless principal-component code of 2x2 patches
(`PatchAutoencoder`) and its velocity network is 3x3 convolutions on the token grid, at a quarter of the image size
(`ConvVelocityModel`), with no text conditioning; one t* serves every input. `small-gated` is the same autoencoder with
gated blocks of convolutions (`GatedConvVelocityModel`, fewer multiply-adds) and a `StrengthEstimator` that reads how
degraded the whole input is, which picks the start time per image. `flux-dev` is FLUX's VAE and transformer, with the
empty-prompt conditioning stored in the model directory. The velocity network is the model directory's `transformer/`
part, FLUX's name for it, whatever its class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .autoencoders import build_autoencoder, downsample_factor
from .conv_velocity import ConvVelocityModel
from .errors import ModelDirError, SettingsError
from .gated_conv_velocity import GatedConvVelocityModel
from .model_schema import architecture_mismatch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from .autoencoders import Autoencoder

    VelocityNetwork = FluxTransformer2DModel | ConvVelocityModel | GatedConvVelocityModel


@dataclass(frozen=True)
class Preset:
    name: str
    vae: dict  # the autoencoder's diffusers config
    transformer: dict
    text_tokens: int  # length of the stored empty-prompt embedding; 0: the velocity network takes no text
    guidance: float | None  # guidance-distilled backbones (FLUX.1-dev) take a constant guidance value
    default_t_star: float  # used until `t*` is estimated from data
    vae_class: str = "AutoencoderKL"
    velocity_class: str = "FluxTransformer2DModel"
    estimator: dict | None = None  # the StrengthEstimator's config; None: one t* for every input
    notes: str = field(default="", compare=False)

    @property
    def vae_downsample(self) -> int:
        return downsample_factor(self.vae_class, self.vae)

    @property
    def stride(self) -> int:
        """Image sizes must be multiples of this: VAE downsampling times the 2x2 token packing."""
        return self.vae_downsample * 2

    @property
    def latent_channels(self) -> int:
        return self.vae["latent_channels"]


def _vae(
    block_out_channels,
    layers_per_block,
    latent_channels,
    norm_num_groups,
    shift,
    scale,
    sample_size,
    mid_attention=True,
):
    depth = len(block_out_channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * depth,
        "up_block_types": ["UpDecoderBlock2D"] * depth,
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "act_fn": "silu",
        "latent_channels": latent_channels,
        "norm_num_groups": norm_num_groups,
        "sample_size": sample_size,
        "scaling_factor": scale,
        "shift_factor": shift,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": mid_attention,
    }


def _patch_autoencoder(patch_size, latent_channels):
    return {"in_channels": 3, "patch_size": patch_size, "latent_channels": latent_channels}


def _conv_velocity(latent_channels, channels, layers):
    return {"in_channels": latent_channels * 4, "channels": channels, "num_layers": layers, "time_embedding_dim": 64}


def _gated_conv_velocity(latent_channels, channels, blocks):
    return {"in_channels": latent_channels * 4, "channels": channels, "num_blocks": blocks, "time_embedding_dim": 64}


def _estimator(channels, hidden, max_side=512):
    return {"channels": list(channels), "hidden": hidden, "max_side": max_side}


def _transformer(latent_channels, layers, single_layers, heads, head_dim, rope, text_dim, pooled_dim, guidance):
    return {
        "patch_size": 1,
        "in_channels": latent_channels * 4,
        "num_layers": layers,
        "num_single_layers": single_layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": heads,
        "joint_attention_dim": text_dim,
        "pooled_projection_dim": pooled_dim,
        "guidance_embeds": guidance,
        "axes_dims_rope": list(rope),
    }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        vae=_patch_autoencoder(2, 12),
        transformer=_gated_conv_velocity(12, 8, 1),
        text_tokens=0,
        guidance=None,
        default_t_star=0.5,
        vae_class="PatchAutoencoder",
        velocity_class="GatedConvVelocityModel",
        estimator=_estimator((4, 8), 8, max_side=64),
        notes="the small preset in miniature, for tests",
    ),
    "tiny-kl": Preset(
        name="tiny-kl",
        vae=_vae((16, 32, 32, 32), 1, 4, 8, shift=0.0, scale=1.0, sample_size=256),
        transformer=_transformer(4, 1, 1, 2, 16, (4, 6, 6), 32, 32, guidance=False),
        text_tokens=4,
        guidance=None,
        default_t_star=0.5,
        notes="flux-dev in miniature (AutoencoderKL), for tests",
    ),
    "small": Preset(
        name="small",
        vae=_patch_autoencoder(2, 12),
        transformer=_conv_velocity(12, 64, 12),
        text_tokens=0,
        guidance=None,
        default_t_star=0.5,
        vae_class="PatchAutoencoder",
        velocity_class="ConvVelocityModel",
        notes="the size flowsr trains and ships",
    ),
    "small-gated": Preset(
        name="small-gated",
        vae=_patch_autoencoder(2, 12),
        transformer=_gated_conv_velocity(12, 48, 4),
        text_tokens=0,
        guidance=None,
        default_t_star=0.5,
        vae_class="PatchAutoencoder",
        velocity_class="GatedConvVelocityModel",
        estimator=_estimator((16, 32, 64, 64), 64),
        notes="the small size with a start time per image, fewer multiply-adds",
    ),
    "flux-dev": Preset(
        name="flux-dev",
        vae=_vae((128, 256, 512, 512), 2, 16, 32, shift=0.1159, scale=0.3611, sample_size=1024),
        transformer=_transformer(16, 19, 38, 24, 128, (16, 56, 56), 4096, 768, guidance=True),
        text_tokens=512,
        guidance=3.5,
        default_t_star=0.5,
        notes="FLUX.1-dev: weights from a local diffusers folder",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise SettingsError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def build_vae(preset: Preset) -> Autoencoder:
    return build_autoencoder(preset.vae_class, preset.vae)


def velocity_network_class(name: str) -> type[VelocityNetwork]:
    """The class a preset names for its velocity network; FLUX's is imported when a model uses it (diffusers' import of
    it pulls in every UNet and transformer it has, seconds of a serving process's start-up)."""
    if name == "ConvVelocityModel":
        return ConvVelocityModel
    if name == "GatedConvVelocityModel":
        return GatedConvVelocityModel
    if name == "FluxTransformer2DModel":
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel
    raise ValueError(
        f"unknown velocity network class {name!r}; flowsr knows ConvVelocityModel, GatedConvVelocityModel, "
        "FluxTransformer2DModel"
    )


def build_transformer(preset: Preset) -> VelocityNetwork:
    """The preset's velocity network (the model's `transformer` part), random weights."""
    return velocity_network_class(preset.velocity_class).from_config(preset.transformer)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_base_components(
    folder: str, preset: Preset, dtype: torch.dtype = torch.float32
) -> tuple[AutoencoderKL, FluxTransformer2DModel]:
    """VAE and transformer from a local diffusers pipeline folder (e.g. FLUX.1-dev), checked against the preset.

    Safetensors only; a folder whose architecture differs from the preset is refused rather than half-loaded.
    """
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True, torch_dtype=dtype)
    transformer = FluxTransformer2DModel.from_pretrained(
        folder, subfolder="transformer", use_safetensors=True, torch_dtype=dtype
    )
    for part, expected, module in (("vae", preset.vae, vae), ("transformer", preset.transformer, transformer)):
        mismatch = architecture_mismatch(module.config, expected)
        if mismatch is not None:
            key, found, value = mismatch
            raise ModelDirError(
                f"{folder}/{part} has {key}={found!r}, but preset {preset.name!r} needs {value!r}; "
                "pick the matching --preset"
            )
    return vae, transformer


@dataclass(frozen=True)
class DegradationPreset:
    name: str
    rae: dict
    unet: dict
    s_max: float = 4.0
    knot_scales: tuple[float, ...] = (1.0, 2.0, 4.0)  # x3 stays out: the unseen scale of DegFlow's evaluation


def _unet(channels: Sequence[int], layers: int, groups: int, attention_from: int) -> dict:
    down = ["AttnDownBlock2D" if level >= attention_from else "DownBlock2D" for level in range(len(channels))]
    return {
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": list(channels),
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": [name.replace("Down", "Up") for name in reversed(down)],
        "norm_num_groups": groups,
        "attention_head_dim": 32,
        "class_embed_type": "timestep",  # the target time r, embedded like t and added to its embedding
        "add_attention": True,
    }


DEGRADATION_PRESETS = {
    "tiny": DegradationPreset(
        "tiny", rae={"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}, unet=_unet((16, 32), 1, 8, 1)
    ),
    "small": DegradationPreset(
        "small",
        rae={"block_out_channels": [32, 64, 96, 128], "norm_num_groups": 16},
        unet=_unet((64, 128, 192), 1, 32, 2),
    ),
}


def get_degradation_preset(name: str) -> DegradationPreset:
    try:
        return DEGRADATION_PRESETS[name]
    except KeyError:
        raise SettingsError(
            f"unknown degradation preset {name!r}; choose one of: {', '.join(DEGRADATION_PRESETS)}"
        ) from None
