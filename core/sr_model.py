"""The one-step SR model: image -> latent -> velocity at t -> one Euler step -> image.

The start time t is the SNR-guided t* of the input's degradation: the model's estimator reads the strength of the
degradation off the whole LR image, and the strength picks t from the times measured per strength in training
(`start_times`); a model with one t* (FLUX) uses it for every input.

The stages are separate methods because every backend (eager, compiled, ONNX, TensorRT) and the latent tiler run
them separately: estimate the strength of the whole LR image, encode, restore the latent tile by tile, decode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from . import flow, latents
from .autoencoders import downsample_factor, latent_of, load_autoencoder
from .color_fix import wavelet_color_fix
from .errors import ModelDirError, first_line
from .latents import LatentNormalization
from .model_dir import LOAD_ERRORS, Manifest, write_model_dir
from .model_schema import check_architecture, check_embeddings
from .presets import (
    Preset,
    build_transformer,
    build_vae,
    get_preset,
    load_base_components,
    velocity_network_class,
)
from .strength_estimator import StrengthEstimator

if TYPE_CHECKING:
    from .autoencoders import Autoencoder
    from .presets import VelocityNetwork

TEXT_EMBEDDINGS = "text_embeddings.safetensors"
ESTIMATOR = "estimator"


def resize_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The SR model's input: the LR image (in [-1, 1]) brought to the output size, bicubic, in training and serving
    alike."""
    return F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple of the stride; reflection avoids a dark border, replicate covers images
    smaller than one stride.

    Always one F.pad (of zero when nothing is missing), and the mode depends only on whether a side reaches one
    stride, so an exported graph (sides of at least one stride) has no branch on the image size.
    """
    height, width = x.shape[2], x.shape[3]
    pad_h, pad_w = -height % multiple, -width % multiple
    mode = "reflect" if height >= multiple and width >= multiple else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def bicubic_padded(lr: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """The model's input for an LR image: bicubic to height x width, padded to the stride."""
    return pad_to_multiple(resize_to(lr, height, width), stride)


def restore_image(
    x: torch.Tensor, t: torch.Tensor, encode, restore, decode, color_fix_levels: int, color_fix_band: int = 0
) -> torch.Tensor:
    """encode -> restore from time t (one NFE) -> decode, then the wavelet colour fix to the bicubic image `x` with
    that many levels (0: none), in bands of `color_fix_band` rows when given (the runtime's way; a graph takes it
    whole): float32."""
    y = decode(restore(encode(x), t)).float()
    return wavelet_color_fix(y, x, color_fix_levels, band=color_fix_band) if color_fix_levels else y


def super_resolve(
    lr: torch.Tensor,
    height: int,
    width: int,
    stride: int,
    start_time,
    encode,
    restore,
    decode,
    color_fix_levels: int,
    color_fix_band: int = 0,
) -> torch.Tensor:
    """The SR pipeline around the model: LR (B, 3, h, w) in [-1, 1] -> its start time t (one per image) ->
    bicubic to height x width -> pad to the stride -> encode -> restore from t (one NFE) -> decode -> wavelet
    colour fix to the bicubic image -> crop -> float32 in [-1, 1]. The stages are callables: the runtime's tiled
    backends, or the model's own methods in the end-to-end graph, so both give the same pixels.
    """
    t = start_time(lr)
    x = bicubic_padded(lr, height, width, stride)
    y = restore_image(x, t, encode, restore, decode, color_fix_levels, color_fix_band)
    return y[:, :, :height, :width].clamp(-1, 1)


class OneStepSR(nn.Module):
    """The SR model. Its directory (`from_pretrained`/`save_pretrained`) holds vae/ and transformer/ (diffusers: the
    autoencoder and the velocity network), optionally estimator/ (the degradation strength of an LR image), the
    empty-prompt embeddings of a text-conditioned velocity network (FLUX), and `flowsr.json` (`self.manifest`):
    the preset, t* and its provenance, the start times per strength, guidance."""

    def __init__(
        self,
        vae: Autoencoder,
        transformer: VelocityNetwork,
        prompt_embeds: torch.Tensor | None,
        pooled_prompt_embeds: torch.Tensor | None,
        t_star: float,
        guidance: float | None = None,
        manifest: Manifest | None = None,
        estimator: StrengthEstimator | None = None,
    ):
        super().__init__()
        self.manifest = manifest
        self.vae = vae
        self.transformer = transformer
        self.estimator = estimator
        # Constant empty-prompt conditioning, computed once when the model was made (no text encoder at run time).
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)
        self.register_buffer("pooled_prompt_embeds", pooled_prompt_embeds, persistent=False)
        self.t_star = float(t_star)
        # SNR-guided start times at strengths evenly spaced from 0 (clean) to 1 (heavy); empty: t* for every input.
        # Manifest constants like t*, not weights: no buffer, so the weights' digest leaves them out (they reach the
        # export keys through `graph_constants`) and casting the model leaves them float32.
        times = manifest.start_times if manifest is not None and manifest.start_times else []
        self.start_times = torch.tensor(times, dtype=torch.float32)
        self.guidance = guidance
        self.normalization = LatentNormalization(vae.config.shift_factor or 0.0, vae.config.scaling_factor)

    kind = "sr"
    packing = latents.PATCH  # each token packs packing x packing latent pixels

    @classmethod
    def from_preset(cls, preset: Preset | str, seed: int = 0) -> OneStepSR:
        """Random weights of a preset (tests, benchmarks, the start of training); labelled untrained."""
        preset = get_preset(preset) if isinstance(preset, str) else preset
        generator = torch.manual_seed(seed)
        vae, transformer = build_vae(preset), build_transformer(preset)
        estimator = StrengthEstimator.from_config(preset.estimator) if preset.estimator else None
        prompt = pooled = None
        if preset.text_tokens:
            prompt = torch.randn(1, preset.text_tokens, preset.transformer["joint_attention_dim"], generator=generator)
            pooled = torch.randn(1, preset.transformer["pooled_projection_dim"], generator=generator)
        return cls._untrained(preset, vae, transformer, prompt, pooled, estimator)

    @classmethod
    @torch.no_grad()
    def from_flux_pipeline(cls, pipeline_dir: str | Path, preset: Preset | str) -> OneStepSR:
        """A base model from a local diffusers FLUX pipeline folder (e.g. FLUX.1-dev): its VAE and transformer, and
        the empty-prompt conditioning computed once with its own CLIP and T5 encoders (then no text encoder runs
        again). The start of AlloSR² training on a real backbone; labelled untrained until fine-tuned."""
        from diffusers import FluxPipeline  # pulls in transformers, needed only here

        preset = get_preset(preset) if isinstance(preset, str) else preset
        try:
            vae, transformer = load_base_components(str(pipeline_dir), preset)
        except OSError as err:
            raise ModelDirError(
                f"{pipeline_dir}: no loadable vae/ and transformer/ ({first_line(err)}); "
                "pass a diffusers FLUX pipeline folder"
            ) from None
        try:
            pipeline = FluxPipeline.from_pretrained(pipeline_dir, vae=None, transformer=None, use_safetensors=True)
            prompt, pooled, _ = pipeline.encode_prompt(
                prompt="", prompt_2="", device="cpu", max_sequence_length=preset.text_tokens
            )
        except Exception as err:
            # transformers and tokenizers raise many types for a broken folder; all mean the same here
            raise ModelDirError(
                f"{pipeline_dir}: cannot load its text encoders and tokenizers ({first_line(err)}); "
                "pass a complete FLUX pipeline folder"
            ) from None
        return cls._untrained(preset, vae, transformer, prompt.float(), pooled.float())

    @classmethod
    def _untrained(
        cls,
        preset: Preset,
        vae,
        transformer,
        prompt: torch.Tensor | None,
        pooled: torch.Tensor | None,
        estimator: StrengthEstimator | None = None,
    ) -> OneStepSR:
        """A model of `preset`'s t* and guidance from its parts, its manifest labelled untrained."""
        manifest = Manifest(
            kind="sr", preset=preset.name, t_star=preset.default_t_star, guidance=preset.guidance, trained=False
        )
        return cls(vae, transformer, prompt, pooled, preset.default_t_star, preset.guidance, manifest, estimator).eval()

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> OneStepSR:
        """Load a model directory; every part is checked against its preset before any weight is read."""
        directory = Path(directory)
        manifest = Manifest.read(directory)
        preset = get_preset(manifest.preset)
        check_architecture(directory / "vae", preset.vae, preset.name, class_name=preset.vae_class)
        check_architecture(directory / "transformer", preset.transformer, preset.name, class_name=preset.velocity_class)
        # The estimator is the preset's part, not the directory's to choose: a preset with one always reads each
        # input's strength, one without never does.
        has_estimator = preset.estimator is not None
        if has_estimator:
            check_architecture(directory / ESTIMATOR, preset.estimator, preset.name, class_name="StrengthEstimator")
        elif (directory / ESTIMATOR).exists():
            raise ModelDirError(
                f"{directory} holds an {ESTIMATOR}/, but preset {preset.name!r} has no strength estimator; "
                "re-create the model directory"
            )
        embeddings = cls._read_embeddings(directory, preset) if preset.text_tokens else {}
        try:
            vae = load_autoencoder(directory / "vae", dtype=dtype)
            velocity_class = velocity_network_class(preset.velocity_class)
            transformer = velocity_class.from_pretrained(
                directory, subfolder="transformer", use_safetensors=True, torch_dtype=dtype
            )
            estimator = (
                StrengthEstimator.from_pretrained(
                    directory, subfolder=ESTIMATOR, use_safetensors=True, torch_dtype=dtype
                )
                if has_estimator
                else None
            )
        except LOAD_ERRORS as err:
            raise ModelDirError(
                f"{directory} is incomplete or corrupt ({first_line(err)}); re-create or re-download it"
            ) from None
        model = cls(
            vae,
            transformer,
            embeddings.get("prompt_embeds"),
            embeddings.get("pooled_prompt_embeds"),
            manifest.t_star,
            manifest.guidance,
            manifest,
            estimator,
        )
        return model.to(device).eval()

    @staticmethod
    def _read_embeddings(directory: Path, preset: Preset) -> dict[str, torch.Tensor]:
        """The stored empty-prompt conditioning of a text-conditioned velocity network, checked against the preset."""
        try:
            embeddings = safetensors.torch.load_file(directory / TEXT_EMBEDDINGS)
        except LOAD_ERRORS as err:
            raise ModelDirError(
                f"{directory / TEXT_EMBEDDINGS} is missing or not a safetensors file ({first_line(err)}); "
                "re-create the model directory"
            ) from None
        check_embeddings(
            directory / TEXT_EMBEDDINGS,
            embeddings,
            {
                "prompt_embeds": (1, preset.text_tokens, preset.transformer["joint_attention_dim"]),
                "pooled_prompt_embeds": (1, preset.transformer["pooled_projection_dim"]),
            },
        )
        return embeddings

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the model directory atomically, with `self.manifest` (t* as the model has it now)."""
        self.manifest.t_star = self.t_star

        def write_parts(folder: Path) -> None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
            self.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
            if self.estimator is not None:
                self.estimator.save_pretrained(folder / ESTIMATOR, safe_serialization=True)
            if self.prompt_embeds is not None:
                embeddings = {"prompt_embeds": self.prompt_embeds, "pooled_prompt_embeds": self.pooled_prompt_embeds}
                safetensors.torch.save_file(
                    {k: v.contiguous().cpu() for k, v in embeddings.items()}, folder / TEXT_EMBEDDINGS
                )

        return write_model_dir(directory, self, self.manifest, write_parts, overwrite)

    def graph_constants(self) -> list:
        """What the exported graphs bake in besides the weights."""
        return [
            self.t_star,
            self.start_times.tolist(),
            self.guidance,
            self.normalization.shift,
            self.normalization.scale,
        ]

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this (autoencoder downsampling x 2x2 packing)."""
        return downsample_factor(type(self.vae).__name__, self.vae.config) * latents.PATCH

    def estimate_strength(self, lr: torch.Tensor) -> torch.Tensor:
        """The degradation strength (B,) in [0, 1] of LR images (B, 3, h, w) in [-1, 1], each seen whole: the
        estimator's, or 0 for a model without one (a model with one t* uses it at every strength)."""
        if self.estimator is None:
            return lr.new_zeros(lr.shape[0], dtype=torch.float32)
        return self.estimator(lr)

    def start_time(self, strength: torch.Tensor) -> torch.Tensor:
        """The start time t (B,) float32 of inputs of a degradation strength (B,) in [0, 1]: the SNR-guided times
        measured per strength, interpolated linearly; t* at every strength for a model without them."""
        strength = strength.float()
        times = self.start_times.to(strength.device)
        count = times.shape[0]
        if count == 0:
            return torch.full_like(strength, self.t_star)
        position = strength.clamp(0, 1) * (count - 1)
        low = position.floor().clamp(max=count - 2)
        high_weight = position - low
        low = low.long()
        return times[low] * (1 - high_weight) + times[low + 1] * high_weight

    def served_times(self, batch: int) -> torch.Tensor:
        """Start times spread over those the model serves, from clean to heavy inputs: what exports verify at."""
        return self.start_time(torch.linspace(0.0, 1.0, batch, device=self.start_times.device))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> normalized latent (B, C, H/f, W/f); a VAE gives its posterior mean, no
        sampling."""
        raw = latent_of(self.vae.encode(image))
        return self.normalization.normalize(raw)

    def velocity(self, tokens: torch.Tensor, t: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """v(z_t, t) on packed tokens of a height x width latent: the one network evaluation."""
        batch = tokens.shape[0]
        dtype = tokens.dtype
        if self.prompt_embeds is None:  # no text conditioning (ConvVelocityModel, GatedConvVelocityModel)
            return self.transformer(tokens, t.to(dtype), height, width)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((batch,), self.guidance, device=tokens.device, dtype=dtype)
        return self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=self.prompt_embeds.to(dtype).expand(batch, -1, -1),
            pooled_projections=self.pooled_prompt_embeds.to(dtype).expand(batch, -1),
            timestep=t.to(dtype),
            img_ids=latents.image_position_ids(height, width, device=tokens.device, dtype=dtype),
            txt_ids=latents.text_position_ids(self.prompt_embeds.shape[1], device=tokens.device, dtype=dtype),
            guidance=guidance,
            return_dict=False,
        )[0]

    def predict_velocity(self, z_lr: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized LR latent and start time t (B,) -> (its packed tokens, v(z_L, t)): the one network
        evaluation."""
        _, _, height, width = z_lr.shape
        tokens = latents.pack(z_lr)
        return tokens, self.velocity(tokens, t.float(), height, width)

    def euler_unpack(
        self, velocity: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """The Euler step z_H = z_L - t·v, unpacked and denormalized to the raw (VAE-scale) HR latent.

        `flowsr.kernels.euler_update.fused_euler_unpack` does the same in one pass on CUDA; this is its reference.
        """
        z_hr = latents.unpack(flow.one_step_sr(tokens, velocity, t.to(tokens.dtype)), height, width)
        return self.normalization.denormalize(z_hr)

    def restore(self, z_lr: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Normalized LR latent and start time t (B,) -> raw (VAE-scale) HR latent, with exactly one velocity
        evaluation."""
        tokens, velocity = self.predict_velocity(z_lr, t)
        return self.euler_unpack(velocity, tokens, t, *z_lr.shape[2:])

    def decode(self, raw_latent: torch.Tensor) -> torch.Tensor:
        """Raw latent -> image in [-1, 1] (unclamped, as the decoder gives it)."""
        return self.vae.decode(raw_latent, return_dict=False)[0]

    def forward(self, image: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """LR image already resized to the target size (sides multiples of `stride`) and its start time t (B,) ->
        SR image."""
        return self.decode(self.restore(self.encode(image), t))
