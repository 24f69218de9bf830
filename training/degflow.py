"""DegFlow training objectives: the RAE on {HR, LR x2, LR x4}, then the (t, r)-conditioned velocity UNet on the
spline through the knot latents. Batches are (B, K, 3, H, W): the HR image and its LR images at the knot scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from flowsr.core import degflow, spline
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.errors import SettingsError


def _spline(times, knots, second, t, derivatives):
    """The fused Triton spline kernel on CUDA, its torch reference elsewhere."""
    if knots.is_cuda:
        from flowsr.kernels.spline import evaluate

        return evaluate(times, knots, second, t, derivatives)
    return spline.evaluate(times, knots, second, t, derivatives)


class RAEObjective(nn.Module):
    """MSE(D(E(y), skips(x_HR)), y) for every y of the sample: the HR image and each knot scale."""

    def __init__(self, model: DegradationModel):
        super().__init__()
        self.model = model
        model.requires_grad_(False)
        model.rae.requires_grad_(True)

    def forward(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        size, knots = batch.shape[:2]
        hr = batch[:, 0].repeat_interleave(knots, dim=0)
        reconstruction = self.model.rae(batch.flatten(0, 1), hr)
        errors = (reconstruction - batch.flatten(0, 1)).pow(2).unflatten(0, (size, knots)).mean(dim=(0, 2, 3, 4))
        return {"loss": errors.mean(), **{f"mse_knot{k}": e for k, e in enumerate(errors)}}


AVERAGE_TARGETS = ("meanflow", "secant")


@dataclass(frozen=True)
class FlowSettings:
    average_share: float = 0.5  # share of each batch trained on u(z(t), t, r), r > t; the rest on v(z(t), t) = z'(t)
    start_share: float = 0.5  # of those, with t = 0: where single-NFE synthesis starts
    average_target: str = "meanflow"  # u's target: MeanFlow's identity (the flow map of v) or the spline's secant
    lookahead: float = 0.1  # scale of the look-ahead term, DegFlow's 0.1 (0 turns it off)
    lookahead_weighting: bool = True  # DegFlow's segment-normalized 1/t weight on it


def along_flow(
    model: DegradationModel, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """u(z, t, r) and its derivative along the trajectory with velocity v, du/dt = ∂u/∂z·v + ∂u/∂t, in one
    forward-mode pass (a JVP), in float32 whatever the autocast outside (autocast does not handle the JVP's dual
    tensors, and a derivative in bfloat16 would be coarse). Two kernels lack a forward-mode derivative for what the
    UNet hands them, so for this pass attention runs as plain matrix products and GroupNorm gets contiguous inputs."""
    hooks = [
        m.register_forward_pre_hook(_contiguous_input) for m in model.unet.modules() if isinstance(m, nn.GroupNorm)
    ]
    try:
        with sdpa_kernel(SDPBackend.MATH), torch.autocast(z.device.type, enabled=False):
            return torch.func.jvp(
                lambda z, t: model.velocity(z, t, r),
                (z.float(), t.float()),
                (v.float(), torch.ones_like(t, dtype=torch.float32)),
            )
    finally:
        for hook in hooks:
            hook.remove()


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


class DegFlowObjective(nn.Module):
    """Multi-point flow matching with the average velocity, plus the look-ahead term.

    - velocity: ||u(z(t), t, r) - target||^2. With r = t the target is z'(t), the spline's slope, and u is the
      instantaneous velocity v. With r > t it is, by `average_target`, MeanFlow's z'(t) + (r - t)·du/dt (so that
      one step of u lands where integrating v does) or the secant (z(r) - z(t)) / (r - t) of the sample's spline;
    - look-ahead (on the r = t samples): z(t) + D v + D^2/2 z'' + D^3/6 z''' with D = t_r - t, decoded with the HR
      skips and compared with the real image at the next knot t_r by `distance` (LPIPS, or L1 in pixels); the
      term is `lookahead` x `degflow.lookahead_term`, the mean of w·distance, as in DegFlow's code (0.1 x
      mean(w·LPIPS) there), so the weights, up to ~400 next to a knot, also set its size against the flow term.
    """

    def __init__(
        self, model: DegradationModel, settings: FlowSettings = FlowSettings(), distance: nn.Module | None = None
    ):
        super().__init__()
        if settings.average_target not in AVERAGE_TARGETS:
            raise SettingsError(
                f"unknown average-velocity target {settings.average_target!r}; use one of {', '.join(AVERAGE_TARGETS)}"
            )
        self.model, self.settings = model, settings
        self.distance = distance if distance is not None else PixelL1()
        model.requires_grad_(False)
        model.unet.requires_grad_(True)

    def forward(self, batch: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        model, settings, times = self.model, self.settings, self.model.knot_times
        size, count = batch.shape[:2]
        with torch.no_grad():
            latents, skips = model.rae.encode(batch.flatten(0, 1))
            knots = latents.unflatten(0, (size, count))
            hr_skips = type(skips)(batch[:, 0], tuple(f.unflatten(0, (size, count))[:, 0] for f in skips.features))
            second = spline.second_derivatives(times, knots)
        device = batch.device

        def uniform():
            return torch.rand(size, generator=generator, device=device)

        t = uniform() * times[-1]
        # a fixed split keeps every loss term in every step
        average = torch.arange(size, device=device) < round(size * settings.average_share)
        t = torch.where(average & (uniform() < settings.start_share), torch.zeros_like(t), t)
        r = torch.where(average, t + uniform() * (times[-1] - t), t)
        with torch.no_grad():
            z_t, slope, curvature, jerk = _spline(times, knots, second, t, derivatives=3)
        if settings.average_target == "meanflow":
            velocity, target = self._meanflow(z_t, t, r, slope, split=int(average.sum()))
        else:
            velocity = model.velocity(z_t, t, r)
            with torch.no_grad():
                target = degflow.secant_velocity(z_t, slope, _spline(times, knots, second, r, derivatives=1)[0], t, r)
        flow_loss = (velocity - target).pow(2).mean()
        losses = {"flow": flow_loss}
        total = flow_loss
        instantaneous = ~average
        if settings.lookahead and bool(instantaneous.any()):
            pick = instantaneous.nonzero().squeeze(1)
            t_i = t[pick]
            _, t_right, knot_index = degflow.neighbour_knots(t_i, times)
            z_ahead = degflow.lookahead(z_t[pick], velocity[pick], curvature[pick], jerk[pick], t_right - t_i)
            image = model.rae.decode(
                z_ahead, type(hr_skips)(hr_skips.image[pick], tuple(f[pick] for f in hr_skips.features))
            )
            real = batch[pick, knot_index]
            lookahead_loss = degflow.lookahead_term(
                self.distance(image, real), t_i, times, settings.lookahead_weighting
            )
            losses["lookahead"] = lookahead_loss
            total = total + settings.lookahead * lookahead_loss
        return {"loss": total, **losses}

    def _meanflow(
        self, z: torch.Tensor, t: torch.Tensor, r: torch.Tensor, slope: torch.Tensor, split: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u and MeanFlow's target for it; the JVP only for the first `split` samples (r > t, by the fixed split),
        while the rest (r = t) regress z'(t) as they are."""
        outputs, targets = [], []
        if split:
            u, du_dt = along_flow(self.model, z[:split], t[:split], r[:split], slope[:split])
            outputs.append(u)
            targets.append(degflow.meanflow_target(slope[:split], du_dt.detach(), t[:split], r[:split]))
        if split < len(z):
            outputs.append(self.model.velocity(z[split:], t[split:], r[split:]))
            targets.append(slope[split:])
        return torch.cat(outputs), torch.cat(targets)


class PixelL1(nn.Module):
    """Per-sample mean absolute error: the look-ahead distance when LPIPS weights are not at hand."""

    def forward(self, image: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return (image - real).abs().mean(dim=(1, 2, 3))


class LPIPSDistance(nn.Module):
    def __init__(self, lpips: nn.Module):
        super().__init__()
        self.lpips = lpips

    def forward(self, image: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.lpips(image, real).flatten()


@torch.no_grad()
def calibrate_rae_latents(rae, samples: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Set the RAE's latent shift/scale so the knot latents of `samples` (N, K, 3, H, W) have mean 0 and std 1."""
    normalized = torch.cat([rae.encode(part)[0] for part in samples.flatten(0, 1).split(batch_size)])
    raw = normalized / rae.config.latent_scale + rae.config.latent_shift
    shift, scale = raw.mean().item(), 1.0 / raw.std().item()
    rae.register_to_config(latent_shift=shift, latent_scale=scale)
    return shift, scale
