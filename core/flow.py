"""Flow-matching math in plain PyTorch: the reference that kernels and training are tested against.

Conventions: t = 0 is clean data, t = 1 is noise; the linear path is
z_t = (1 - t) z_0 + t eps with velocity v = eps - z_0; stepping toward data is z - dt * v.
Every time or step argument is a Python float, a 0-d tensor or a per-sample tensor of shape (B,).
"""

from __future__ import annotations

import torch

from .errors import FlowsrError

Time = float | torch.Tensor


def per_sample(value: Time, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample (B,) value against a (B, ...) tensor (already broadcast: as is)."""
    value = torch.as_tensor(value, device=like.device, dtype=like.dtype)
    if value.ndim == 0 or value.ndim == like.ndim:
        return value
    if value.shape != (like.shape[0],):
        raise ValueError(f"per-sample value has shape {tuple(value.shape)}, expected ({like.shape[0]},)")
    return value.view(-1, *([1] * (like.ndim - 1)))


def interpolate(a: torch.Tensor, b: torch.Tensor, s: Time) -> torch.Tensor:
    """(1 - s) a + s b: every straight path in the stack (linear, generative, FATC)."""
    s = per_sample(s, a)
    return a + s * (b - a)


def linear_path(z0: torch.Tensor, noise: torch.Tensor, t: Time) -> tuple[torch.Tensor, torch.Tensor]:
    """Generative path point z_t and its velocity target eps - z_0."""
    return interpolate(z0, noise, t), noise - z0


def euler_step(z: torch.Tensor, velocity: torch.Tensor, dt: Time) -> torch.Tensor:
    """z + dt * v. One-step SR uses dt = -t*; single-NFE degradation uses dt = +r."""
    return z + per_sample(dt, z) * velocity


def one_step_sr(z_lr: torch.Tensor, velocity: torch.Tensor, t_star: Time) -> torch.Tensor:
    """AlloSR² inference: z_H_hat = z_L - t* v(z_L, t*)."""
    return euler_step(z_lr, velocity, -torch.as_tensor(t_star))


def snr_statistics(z_lr: torch.Tensor, z_hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample signal power S = mean(z_H^2) and degradation power D = mean((z_L - z_H)^2)."""
    dims = tuple(range(1, z_hr.ndim))
    signal = z_hr.float().pow(2).mean(dim=dims)
    degradation = (z_lr.float() - z_hr.float()).pow(2).mean(dim=dims)
    return signal, degradation


def snr_start_time(signal: torch.Tensor, degradation: torch.Tensor, grid_size: int = 1000) -> float:
    """SNR-guided start time t* = argmin_t mean_i |(1-t)^2/t^2 S_i - S_i/D_i| over a grid in (0, 1).

    For one sample the minimiser is t = sqrt(D) / (1 + sqrt(D)).
    """
    if signal.numel() == 0:
        raise ValueError("t* needs at least one sample")
    if bool((degradation <= 0).any()):
        raise FlowsrError(
            "a low-resolution latent equals its high-resolution latent (D = 0): t* is undefined; "
            "train on degraded pairs"
        )
    t = torch.linspace(0.0, 1.0, grid_size + 2, dtype=torch.float64)[1:-1]
    path_snr = ((1 - t) ** 2 / t**2)[:, None] * signal.double()[None, :]
    data_snr = (signal.double() / degradation.double())[None, :]
    cost = (path_snr - data_snr).abs().mean(dim=1)
    return float(t[cost.argmin()])


def pair_start_time(z_lr: torch.Tensor, z_hr: torch.Tensor) -> torch.Tensor:
    """Each pair's own SNR-guided start time, the closed form of `snr_start_time` for one sample:
    t = sqrt(D) / (1 + sqrt(D)), per sample, float32."""
    root = snr_statistics(z_lr, z_hr)[1].sqrt()
    return root / (1 + root)


def fatc_point(z_hr: torch.Tensor, z_lr: torch.Tensor, t: Time, t_star: Time) -> tuple[torch.Tensor, torch.Tensor]:
    """FATC: z_t^sr = (1 - t/t*) z_H + (t/t*) z_L, with target velocity (z_L - z_H) / t*."""
    t_star = per_sample(t_star, z_hr)
    return interpolate(z_hr, z_lr, per_sample(t, z_hr) / t_star), (z_lr - z_hr) / t_star


def atm_direction(
    z_sr: torch.Tensor,
    z_gen: torch.Tensor,
    v_sr: torch.Tensor,
    v_gen: torch.Tensor,
    t: Time,
    z_hr_hat: torch.Tensor,
    z_hr: torch.Tensor,
) -> torch.Tensor:
    """ATM score-distillation direction g = w [(z_sr - z_gen) - t (v_sr - v_gen)], w = 1/mean|z_H_hat - z_H|.

    Computed without grad; the parameter gradient is g . dz_H_hat/dtheta (surrogate mean(sg(g) * z_H_hat)).
    """
    with torch.no_grad():
        dims = tuple(range(1, z_hr.ndim))
        weight = 1.0 / (z_hr_hat - z_hr).abs().mean(dim=dims).clamp_min(1e-8)
        direction = (z_sr - z_gen) - per_sample(t, z_sr) * (v_sr - v_gen)
        return per_sample(weight, direction) * direction
