"""Real-ESRGAN-style degradation: kernels against closed forms, reproducible, really degrading."""

import cv2
import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from flowsr.training import degradations as deg


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()[:256, 128:384].astype(np.float32) / 255


def test_isotropic_gaussian_is_separable_closed_form():
    sigma, size = 1.7, 13
    kernel = deg.gaussian_kernel(size, np.diag([sigma**2, sigma**2]))
    axis = np.arange(size) - size // 2
    one_d = np.exp(-(axis**2) / (2 * sigma**2))
    np.testing.assert_allclose(kernel, np.outer(one_d, one_d) / np.outer(one_d, one_d).sum(), rtol=1e-10)


def test_anisotropic_gaussian_has_its_covariance():
    theta, sx, sy = 0.6, 2.0, 0.8
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    covariance = rotation @ np.diag([sx**2, sy**2]) @ rotation.T
    kernel = deg.gaussian_kernel(41, covariance)  # wide enough that truncation is negligible
    axis = np.arange(41) - 20
    xx, yy = np.meshgrid(axis, axis)
    measured = np.array([[np.sum(kernel * a * b) for b in (xx, yy)] for a in (xx, yy)])
    np.testing.assert_allclose(measured, covariance, atol=1e-6)


def test_plateau_and_generalized_kernels():
    covariance = np.diag([2.0, 2.0])
    d = deg.mahalanobis_grid(9, covariance)
    plateau = deg.gaussian_kernel(9, covariance, beta=1.5, plateau=True)
    np.testing.assert_allclose(plateau, (1 / (1 + d**1.5)) / (1 / (1 + d**1.5)).sum())
    box_like = deg.gaussian_kernel(9, covariance, beta=4.0)
    assert box_like.sum() == pytest.approx(1.0)
    assert box_like[4, 4] == pytest.approx(box_like[4, 5], rel=0.05)  # flat top for large beta


def test_sinc_kernel_is_a_low_pass_filter():
    kernel = deg.sinc_kernel(21, np.pi / 3)
    assert kernel.sum() == pytest.approx(1.0) and np.allclose(kernel, kernel.T)
    response = np.abs(np.fft.fftshift(np.fft.fft2(kernel, s=(128, 128))))
    centre = 64
    assert response[centre, centre] == pytest.approx(1.0)
    # Frequencies well below the cutoff pass, those near Nyquist are stopped.
    assert response[centre, centre + 5] > 0.9 and response[centre, centre + 60] < 0.1


def test_degrade_is_reproducible_and_sized(photo):
    a = deg.degrade(photo, 4, seed=7)
    b = deg.degrade(photo, 4, seed=7)
    c = deg.degrade(photo, 4, seed=8)
    assert a.shape == (64, 64, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert deg.degrade(photo, 2.7, seed=1).shape == (95, 95, 3)


def test_degrade_is_worse_than_clean_downscaling(photo):
    clean = cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA)
    scores = [peak_signal_noise_ratio(clean, deg.degrade(photo, 4, seed), data_range=1.0) for seed in range(8)]
    assert max(scores) < 35 and np.mean(scores) < 28  # blur, noise and JPEG really happened
    assert min(scores) > 12  # ... and the content survived


@pytest.mark.parametrize("bad,scale,message", [(np.zeros((8, 8, 3), np.uint8), 2, "float32"), (np.zeros((8, 8, 3), np.float32), 0.5, "at least 1")])
def test_bad_input(bad, scale, message):
    with pytest.raises(ValueError, match=message):
        deg.degrade(bad, scale, seed=0)
