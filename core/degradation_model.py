"""The DegFlow degradation model: RAE + a diffusers `UNet2DModel` velocity network conditioned on (t, r).

HR image -> RAE latent z(0) and skips -> one evaluation of the average velocity u(z(0), 0, r) ->
z(r) = z(0) + r u -> RAE decode with the HR skips -> the degraded image at scale s(r), at HR size.
`solve` integrates the instantaneous velocity v(z, t) = u(z, t, t) instead, the multi-step reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import UNet2DModel
from torch import nn

from .degflow import scale_to_time
from .errors import SettingsError
from .flow import per_sample
from .rae import ResidualAutoencoder

TIME_SCALE = 1000.0  # diffusers' sinusoidal time embedding is made for timesteps in [0, 1000]


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
    "tiny": DegradationPreset("tiny", rae={"block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4}, unet=_unet((16, 32), 1, 8, 1)),
    "small": DegradationPreset("small", rae={"block_out_channels": [32, 64, 96, 128], "norm_num_groups": 16}, unet=_unet((64, 128, 192), 1, 32, 2)),
}


def get_degradation_preset(name: str) -> DegradationPreset:
    try:
        return DEGRADATION_PRESETS[name]
    except KeyError:
        raise SettingsError(f"unknown degradation preset {name!r}; choose one of: {', '.join(DEGRADATION_PRESETS)}") from None


class DegradationModel(nn.Module):
    def __init__(self, rae: ResidualAutoencoder, unet: UNet2DModel, knot_scales: Sequence[float], s_max: float):
        super().__init__()
        self.rae, self.unet = rae, unet
        self.s_max = float(s_max)
        self.knot_scales = tuple(float(s) for s in knot_scales)
        self.knot_times = tuple(scale_to_time(s, self.s_max) for s in self.knot_scales)
        if self.knot_times[0] != 0.0:
            raise ValueError(f"the first knot must be the HR image (scale 1), got scales {self.knot_scales}")

    kind = "degradation"

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

    def forward(self, hr: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Single NFE: HR (B, 3, H, W) in [-1, 1] and target times r (B,) -> degraded images at HR size."""
        z0, skips = self.rae.encode(hr)
        z_r = z0 + per_sample(r, z0) * self.velocity(z0, torch.zeros_like(r), r)
        return self.rae.decode(z_r, skips)

    @torch.no_grad()
    def solve(self, hr: torch.Tensor, r: float, steps: int | None = None, rtol: float = 1e-4, atol: float = 1e-4) -> tuple[torch.Tensor, int]:
        """The multi-step reference: images at time r and the number of velocity evaluations (see `integrate`)."""
        z0, skips = self.rae.encode(hr)
        z, evaluations = self.integrate(z0, r, steps, rtol, atol)
        return self.rae.decode(z, skips), evaluations

    @torch.no_grad()
    def integrate(self, z0: torch.Tensor, r: float, steps: int | None = None, rtol: float = 1e-4, atol: float = 1e-4) -> tuple[torch.Tensor, int]:
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


def build_degradation_model(preset: DegradationPreset | str) -> DegradationModel:
    preset = get_degradation_preset(preset) if isinstance(preset, str) else preset
    return DegradationModel(ResidualAutoencoder(**preset.rae), UNet2DModel(**preset.unet), preset.knot_scales, preset.s_max)
