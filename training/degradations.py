"""Real-ESRGAN-style second-order degradation: (blur -> resize -> noise -> JPEG) twice, then downscale.

Works on float32 HWC RGB in [0, 1] with OpenCV; every random choice comes from one seeded numpy Generator,
so a (image, seed) pair always gives the same LR image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import special

from flowsr.core.degflow import lr_size

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)


@dataclass(frozen=True)
class StageConfig:
    """One order of the pipeline (the defaults are Real-ESRGAN's first order)."""

    blur_prob: float = 1.0
    kernel_probs: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    generalized_beta: tuple = (0.5, 4.0)
    plateau_beta: tuple = (1.0, 2.0)
    resize_probs: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple = (1.0, 30.0)  # in 8-bit levels
    poisson_scale: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple = (30, 95)


@dataclass(frozen=True)
class DegradationConfig:
    first: StageConfig = StageConfig()
    second: StageConfig = StageConfig(
        blur_prob=0.8,
        blur_sigma=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )
    final_sinc_prob: float = 0.8
    kernel_sizes: tuple = tuple(range(7, 22, 2))


def _covariance(rng: np.random.Generator, sigma: tuple, isotropic: bool) -> np.ndarray:
    sx = rng.uniform(*sigma)
    if isotropic:
        return np.diag([sx**2, sx**2])
    sy, theta = rng.uniform(*sigma), rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return rotation @ np.diag([sx**2, sy**2]) @ rotation.T


def mahalanobis_grid(size: int, covariance: np.ndarray) -> np.ndarray:
    """x^T Sigma^-1 x on a size x size grid centred on the middle pixel."""
    axis = np.arange(size) - size // 2
    xx, yy = np.meshgrid(axis, axis)
    points = np.stack([xx, yy], axis=-1)
    return np.einsum("...i,ij,...j->...", points, np.linalg.inv(covariance), points)


def gaussian_kernel(size: int, covariance: np.ndarray, beta: float = 1.0, plateau: bool = False) -> np.ndarray:
    """Gaussian (beta=1), generalized Gaussian exp(-d^beta / 2) or plateau 1 / (1 + d^beta), normalized to sum 1."""
    d = mahalanobis_grid(size, covariance)
    kernel = 1.0 / (1.0 + d**beta) if plateau else np.exp(-0.5 * d**beta)
    return kernel / kernel.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """Circular low-pass (2-D sinc) kernel with cutoff frequency `cutoff` in radians per pixel, sum 1."""
    axis = np.arange(size) - size // 2
    r = np.hypot(*np.meshgrid(axis, axis))
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * special.j1(cutoff * r) / (2 * np.pi * r)
    kernel[r == 0] = cutoff**2 / (4 * np.pi)
    return kernel / kernel.sum()


def random_blur_kernel(rng: np.random.Generator, stage: StageConfig, sizes: tuple) -> np.ndarray:
    size = int(rng.choice(sizes))
    if rng.uniform() < stage.sinc_prob:
        return sinc_kernel(size, rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi))
    kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES), p=np.asarray(stage.kernel_probs) / sum(stage.kernel_probs))]
    covariance = _covariance(rng, stage.blur_sigma, isotropic=kind.endswith("iso") and not kind.endswith("aniso"))
    if kind.startswith("generalized"):
        return gaussian_kernel(size, covariance, beta=rng.uniform(*stage.generalized_beta))
    if kind.startswith("plateau"):
        return gaussian_kernel(size, covariance, beta=rng.uniform(*stage.plateau_beta), plateau=True)
    return gaussian_kernel(size, covariance)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def _resize(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    interpolation = INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))]
    return cv2.resize(image, (max(1, width), max(1, height)), interpolation=interpolation)


def _noise(image: np.ndarray, rng: np.random.Generator, stage: StageConfig) -> np.ndarray:
    gray = rng.uniform() < stage.gray_noise_prob
    shape = image.shape[:2] + ((1,) if gray else (3,))
    if rng.uniform() < stage.gaussian_noise_prob:
        noise = rng.normal(0.0, rng.uniform(*stage.noise_sigma) / 255.0, shape)
    else:
        # Poisson (shot) noise: counts scale with brightness; `scale` sets the strength.
        scale = rng.uniform(*stage.poisson_scale)
        source = image.mean(axis=2, keepdims=True) if gray else image
        levels = np.clip(source, 0, 1) * 255.0
        noise = (rng.poisson(levels) - levels) / 255.0 * scale
    return np.clip(image + noise.astype(np.float32), 0.0, 1.0)


def _jpeg(image: np.ndarray, rng: np.random.Generator, stage: StageConfig) -> np.ndarray:
    quality = int(rng.integers(stage.jpeg_quality[0], stage.jpeg_quality[1] + 1))
    bgr = (np.clip(image, 0, 1)[..., ::-1] * 255.0).round().astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode a degraded image")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def _blur_resize_noise(
    image: np.ndarray, rng: np.random.Generator, stage: StageConfig, sizes: tuple, base: tuple
) -> np.ndarray:
    """One order without its JPEG step; the resize factor is relative to `base` (height, width)."""
    if rng.uniform() < stage.blur_prob:
        image = _filter(image, random_blur_kernel(rng, stage, sizes))
    direction = rng.choice(3, p=np.asarray(stage.resize_probs) / sum(stage.resize_probs))
    factor = (rng.uniform(1, stage.resize_range[1]), rng.uniform(stage.resize_range[0], 1), 1.0)[direction]
    image = _resize(image, round(base[0] * factor), round(base[1] * factor), rng)
    return _noise(image, rng, stage)


def degrade(hr: np.ndarray, scale: float, seed: int, config: DegradationConfig = DegradationConfig()) -> np.ndarray:
    """HR float32 HWC RGB in [0, 1] -> LR of size round(H/scale) x round(W/scale), reproducible from `seed`."""
    if hr.ndim != 3 or hr.shape[2] != 3 or hr.dtype != np.float32:
        raise ValueError(f"expected a float32 (H, W, 3) image in [0, 1], got {hr.dtype} {hr.shape}")
    if scale < 1:
        raise ValueError(f"degradation scale must be at least 1, got {scale}")
    rng = np.random.default_rng(seed)
    height, width = hr.shape[:2]
    out_h, out_w = lr_size(height, width, scale)
    image = _jpeg(_blur_resize_noise(hr, rng, config.first, config.kernel_sizes, (height, width)), rng, config.first)
    # The second order resizes relative to the final LR size, as Real-ESRGAN does; its JPEG comes last.
    image = _blur_resize_noise(image, rng, config.second, config.kernel_sizes, (out_h, out_w))

    def final_resize(img):
        img = _resize(img, out_h, out_w, rng)
        if rng.uniform() < config.final_sinc_prob:
            size = int(rng.choice(config.kernel_sizes))
            img = _filter(img, sinc_kernel(size, rng.uniform(np.pi / 3, np.pi)))
        return img

    if rng.uniform() < 0.5:
        image = _jpeg(final_resize(image), rng, config.second)
    else:
        image = final_resize(_jpeg(image, rng, config.second))
    return np.clip(image, 0.0, 1.0)


def bicubic_downscale(hr: np.ndarray, scale: float) -> np.ndarray:
    """The clean degradation of classic SR benchmarks: antialiased bicubic downscaling only, no blur, noise or JPEG."""
    if hr.ndim != 3 or hr.shape[2] != 3 or hr.dtype != np.float32:
        raise ValueError(f"expected a float32 (H, W, 3) image in [0, 1], got {hr.dtype} {hr.shape}")
    if scale < 1:
        raise ValueError(f"degradation scale must be at least 1, got {scale}")
    size = lr_size(hr.shape[0], hr.shape[1], scale)
    image = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None]
    lr = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True)
    return lr[0].permute(1, 2, 0).clamp(0, 1).numpy()


# --- The degradation continuum: one strength from clean (0) through mild to heavy (1).
#
# Real inputs are mostly neither clean downscales nor the heavy pipeline above but in between (web and phone
# pictures: a little blur, some noise, JPEG). A model trained on two modes smooths that middle, so training pairs
# draw a strength s and each step of a single-order pipeline (blur -> downscale -> noise -> JPEG) a strength of its
# own around it; towards s = 1 a growing share of pairs come from the heavy second-order pipeline, which reaches
# further than one order can.


@dataclass(frozen=True)
class ContinuumConfig:
    clean_share: float = 0.35  # pairs at strength 0: clean antialiased bicubic downscales
    step_prob: float = 0.85  # each step of the single order happens with this probability when s > 0
    component_spread: tuple = (0.4, 1.0)  # a step's own strength is s times a uniform draw from this range
    max_blur_sigma: float = 3.0  # Gaussian blur on the HR image at full strength (pixels of the HR image)
    anisotropic_prob: float = 0.3
    max_noise_sigma: float = 12.0  # Gaussian noise at full strength (8-bit levels, on the LR image)
    gray_noise_prob: float = 0.3
    poisson_prob: float = 0.2  # shot noise instead of Gaussian, at a scale of noise_sigma / 10
    jpeg_quality: tuple = (95, 30)  # JPEG quality at strength 0 and 1
    heavy_from: float = 0.5  # above this strength, the heavy pipeline's share grows linearly ...
    heavy_share_at_one: float = 0.25  # ... to this at s = 1
    heavy: DegradationConfig = DegradationConfig()


@dataclass(frozen=True)
class Steps:
    """The single-order pipeline at fixed strengths in [0, 1]; None skips a step. Downscaling is antialiased bicubic
    unless `resize` names an OpenCV interpolation."""

    blur: float | None = None
    noise: float | None = None
    jpeg: float | None = None
    resize: int | None = None
    anisotropy: tuple[float, float] = (1.0, 0.0)  # (minor/major axis ratio, angle) of the blur
    gray_noise: bool = False
    poisson: bool = False


def apply_steps(
    hr: np.ndarray, scale: float, steps: Steps, rng: np.random.Generator, config: ContinuumConfig = ContinuumConfig()
) -> np.ndarray:
    """HR float32 HWC in [0, 1] -> LR: blur (HR) -> downscale by `scale` -> noise -> JPEG, each at its strength."""
    image = hr
    if steps.blur:
        sigma = max(0.1, steps.blur * config.max_blur_sigma)
        ratio, angle = steps.anisotropy
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        covariance = rotation @ np.diag([sigma**2, (sigma * ratio) ** 2]) @ rotation.T
        size = 2 * int(np.ceil(3 * sigma)) + 1
        image = _filter(image, gaussian_kernel(size, covariance))
    if steps.resize is None:
        image = bicubic_downscale(np.ascontiguousarray(image, dtype=np.float32), scale)
    else:
        out_h, out_w = lr_size(hr.shape[0], hr.shape[1], scale)
        image = cv2.resize(image, (out_w, out_h), interpolation=steps.resize)
    if steps.noise:
        sigma = steps.noise * config.max_noise_sigma
        shape = image.shape[:2] + ((1,) if steps.gray_noise else (3,))
        if steps.poisson:
            levels = np.clip(image.mean(axis=2, keepdims=True) if steps.gray_noise else image, 0, 1) * 255.0
            noise = (rng.poisson(levels) - levels) / 255.0 * (sigma / 10)
        else:
            noise = rng.normal(0.0, sigma / 255.0, shape)
        image = np.clip(image + noise.astype(np.float32), 0.0, 1.0)
    if steps.jpeg:
        best, worst = config.jpeg_quality
        quality = int(round(best + steps.jpeg * (worst - best)))
        image = _jpeg(image, rng, StageConfig(jpeg_quality=(quality, quality)))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def draw_strength(rng: np.random.Generator, config: ContinuumConfig = ContinuumConfig()) -> float:
    """The continuum's strength: 0 (clean) with probability `clean_share`, otherwise uniform in (0, 1]."""
    return 0.0 if rng.uniform() < config.clean_share else float(1.0 - rng.uniform())


def degrade_continuum(
    hr: np.ndarray, scale: float, seed: int, strength: float | None = None, config: ContinuumConfig = ContinuumConfig()
) -> np.ndarray:
    """HR float32 HWC RGB in [0, 1] -> LR at a strength drawn from the continuum (or given), reproducible from
    `seed`."""
    rng = np.random.default_rng(seed)
    s = draw_strength(rng, config) if strength is None else float(strength)
    if s <= 0:
        return bicubic_downscale(hr, scale)
    heavy_share = config.heavy_share_at_one * max(0.0, (s - config.heavy_from) / (1 - config.heavy_from))
    if rng.uniform() < heavy_share:
        return degrade(hr, scale, seed=int(rng.integers(2**31)), config=config.heavy)

    def strength_of_step() -> float | None:
        return s * rng.uniform(*config.component_spread) if rng.uniform() < config.step_prob else None

    anisotropic = rng.uniform() < config.anisotropic_prob
    steps = Steps(
        blur=strength_of_step(),
        noise=strength_of_step(),
        jpeg=strength_of_step(),
        resize=INTERPOLATIONS[rng.integers(len(INTERPOLATIONS))] if rng.uniform() < s else None,
        anisotropy=(rng.uniform(0.3, 1.0), rng.uniform(-np.pi, np.pi)) if anisotropic else (1.0, 0.0),
        gray_noise=rng.uniform() < config.gray_noise_prob,
        poisson=rng.uniform() < config.poisson_prob,
    )
    return apply_steps(hr, scale, steps, rng, config)


# The evaluation's kinds of input, each reproducible per image from a seed: clean downscales, "mild" (what web and
# phone pictures look like: Gaussian blur sigma 1.2 on the HR, bicubic, noise sigma 3/255, JPEG quality 75), the
# heavy pipeline, and the sweep's levels between them (every step of the single order at one strength s).
MILD = Steps(blur=1.2 / ContinuumConfig.max_blur_sigma, noise=3.0 / ContinuumConfig.max_noise_sigma, jpeg=20 / 65)
SWEEP = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, "heavy")


def degrade_for_eval(hr: np.ndarray, scale: float, kind: str | float, seed: int) -> np.ndarray:
    """`kind`: "clean", "mild", "heavy", or a sweep strength s in [0, 1] (0 is clean)."""
    if kind == "clean" or kind == 0:
        return bicubic_downscale(hr, scale)
    if kind == "heavy":
        return degrade(hr, scale, seed=seed)
    rng = np.random.default_rng(seed)
    if kind == "mild":
        return apply_steps(hr, scale, MILD, rng)
    s = float(kind)
    return apply_steps(hr, scale, Steps(blur=s, noise=s, jpeg=s), rng)
