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


def _blur_resize_noise(image: np.ndarray, rng: np.random.Generator, stage: StageConfig, sizes: tuple, base: tuple) -> np.ndarray:
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
