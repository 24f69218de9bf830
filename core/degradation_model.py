"""The DegFlow degradation model: RAE + a diffusers `UNet2DModel` velocity network conditioned on (t, r).

HR image -> RAE latent z(0) and skips -> one evaluation of the average velocity u(z(0), 0, r) ->
z(r) = z(0) + r u -> RAE decode with the HR skips -> the degraded image at scale s(r), at HR size.
`solve` integrates the instantaneous velocity v(z, t) = u(z, t, t) instead, the multi-step reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DModel
from torch import nn

from .degflow import scale_to_time
from .errors import ModelDirError, first_line
from .flow import per_sample
from .model_dir import LOAD_ERRORS, DegradationManifest, write_model_dir
from .model_schema import check_architecture
from .noise_model import NoiseModel
from .presets import DegradationPreset, get_degradation_preset
from .rae import ResidualAutoencoder

TIME_SCALE = 1000.0  # diffusers' sinusoidal time embedding is made for timesteps in [0, 1000]


class DegradationModel(nn.Module):
    """The degradation model. Its directory (`from_pretrained`/`save_pretrained`) holds rae/ and unet/ (diffusers)
    and `flowsr.json` (`self.manifest`): the preset, s_max, the knot scales it was trained on and the fitted pixel
    noise that the runtime adds to its images (`noise_model`)."""

    def __init__(
        self,
        rae: ResidualAutoencoder,
        unet: UNet2DModel,
        knot_scales: Sequence[float],
        s_max: float,
        manifest: DegradationManifest | None = None,
    ):
        super().__init__()
        self.rae, self.unet, self.manifest = rae, unet, manifest
        self.s_max = float(s_max)
        self.knot_scales = tuple(float(s) for s in knot_scales)
        self.knot_times = tuple(scale_to_time(s, self.s_max) for s in self.knot_scales)
        if self.knot_times[0] != 0.0:
            raise ValueError(f"the first knot must be the HR image (scale 1), got scales {self.knot_scales}")

    kind = "degradation"

    @classmethod
    def from_preset(cls, preset: DegradationPreset | str, seed: int = 0) -> DegradationModel:
        """Random weights of a preset (tests, the start of training); labelled untrained."""
        preset = get_degradation_preset(preset) if isinstance(preset, str) else preset
        torch.manual_seed(seed)
        manifest = DegradationManifest(
            kind="degradation",
            preset=preset.name,
            s_max=preset.s_max,
            knot_scales=list(preset.knot_scales),
            trained=False,
        )
        return cls(
            ResidualAutoencoder(**preset.rae), UNet2DModel(**preset.unet), preset.knot_scales, preset.s_max, manifest
        ).eval()

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> DegradationModel:
        """Load a model directory; both parts are checked against the preset before any weight is read."""
        directory = Path(directory)
        manifest = DegradationManifest.read(directory)
        preset = get_degradation_preset(manifest.preset)
        check_architecture(directory / "rae", preset.rae, preset.name)
        check_architecture(directory / "unet", preset.unet, preset.name)
        try:
            rae = ResidualAutoencoder.from_pretrained(
                directory, subfolder="rae", use_safetensors=True, torch_dtype=dtype
            )
            unet = UNet2DModel.from_pretrained(directory, subfolder="unet", use_safetensors=True, torch_dtype=dtype)
        except LOAD_ERRORS as err:
            raise ModelDirError(
                f"{directory} is incomplete or corrupt ({first_line(err)}); re-create or re-download it"
            ) from None
        return cls(rae, unet, manifest.knot_scales, manifest.s_max, manifest).to(device).eval()

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the model directory atomically, with `self.manifest`."""

        def write_parts(folder: Path) -> None:
            self.rae.save_pretrained(folder / "rae", safe_serialization=True)
            self.unet.save_pretrained(folder / "unet", safe_serialization=True)

        return write_model_dir(directory, self, self.manifest, write_parts, overwrite)

    @property
    def noise_model(self) -> NoiseModel | None:
        """The fitted pixel noise of the manifest (`flowsr train degradation noise`), or None."""
        return NoiseModel.from_dict(self.manifest.noise) if self.manifest is not None and self.manifest.noise else None

    def graph_constants(self) -> list:
        """What the exported graph bakes in besides the weights."""
        return [self.s_max, list(self.knot_scales)]

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this: the RAE's 8 times the UNet's downsampling."""
        return self.rae.stride * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def velocity(self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """u(z, t, r), the average velocity from t to r; r = t gives the instantaneous velocity v(z, t)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=z.device).expand(z.shape[0])
        r = torch.as_tensor(r, dtype=torch.float32, device=z.device).expand(z.shape[0])
        return self.unet(z, t * TIME_SCALE, class_labels=r * TIME_SCALE).sample

    def served_times(self, batch: int) -> torch.Tensor:
        """Target times spread over those the model serves (scales from about x1.6 to x4): what exports verify at."""
        return torch.linspace(0.2, 1.0, batch)

    def forward(self, hr: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Single NFE: HR (B, 3, H, W) in [-1, 1] and target times r (B,) -> degraded images at HR size."""
        z0, skips = self.rae.encode(hr)
        z_r = z0 + per_sample(r, z0) * self.velocity(z0, torch.zeros_like(r), r)
        return self.rae.decode(z_r, skips)

    @torch.no_grad()
    def solve(
        self, hr: torch.Tensor, r: float, steps: int | None = None, rtol: float = 1e-4, atol: float = 1e-4
    ) -> tuple[torch.Tensor, int]:
        """The multi-step reference: images at time r and the number of velocity evaluations (see `integrate`)."""
        z0, skips = self.rae.encode(hr)
        z, evaluations = self.integrate(z0, r, steps, rtol, atol)
        return self.rae.decode(z, skips), evaluations

    @torch.no_grad()
    def integrate(
        self, z0: torch.Tensor, r: float, steps: int | None = None, rtol: float = 1e-4, atol: float = 1e-4
    ) -> tuple[torch.Tensor, int]:
        """dz/dt = v(z, t) from z(0) to z(r) with `steps` Euler steps, or with torchdiffeq's adaptive dopri5 when
        `steps` is None. Returns (z(r), number of velocity evaluations)."""
        evaluations = 0

        def field(t, z):
            nonlocal evaluations
            evaluations += 1
            return self.velocity(z, t, t)

        if r == 0:
            return z0, 0
        if steps is not None:
            if steps < 1:
                raise ValueError(f"steps must be at least 1, got {steps}")
            z, dt = z0, r / steps
            for step in range(steps):
                z = z + dt * field(torch.tensor(step * dt, device=z.device), z)
            return z, evaluations
        from torchdiffeq import odeint

        times = torch.tensor([0.0, r], dtype=torch.float32, device=z0.device)
        return odeint(field, z0, times, method="dopri5", rtol=rtol, atol=atol)[-1], evaluations
