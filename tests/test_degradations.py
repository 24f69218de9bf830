"""Real-ESRGAN-style degradation: kernels against closed forms, reproducible, really degrading; the degradation
continuum from clean to heavy, and the evaluation's kinds of input against their closed descriptions."""

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image
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


@pytest.mark.parametrize(
    "bad,scale,message",
    [(np.zeros((8, 8, 3), np.uint8), 2, "float32"), (np.zeros((8, 8, 3), np.float32), 0.5, "at least 1")],
)
def test_bad_input(bad, scale, message):
    with pytest.raises(ValueError, match=message):
        deg.degrade(bad, scale, seed=0)


# --- the continuum and the evaluation's inputs ----------------------------------------------------------------------

NUMERIC_SWEEP = [s for s in deg.SWEEP if not isinstance(s, str)]


def test_continuum_is_reproducible_from_its_seed(photo):
    draws = [deg.degrade_continuum(photo, 4, seed) for seed in range(6)]
    assert all(np.array_equal(d, deg.degrade_continuum(photo, 4, seed)) for seed, d in enumerate(draws))
    assert all(d.shape == (64, 64, 3) and d.dtype == np.float32 and 0 <= d.min() and d.max() <= 1 for d in draws)
    # every seed its own draw, once the clean ones (a share of them, all the same downscale) are left out
    never_clean = deg.ContinuumConfig(clean_share=0.0)
    degraded = [deg.degrade_continuum(photo, 4, seed, config=never_clean) for seed in range(6)]
    assert len({d.tobytes() for d in degraded}) == len(degraded)
    at_half = deg.degrade_continuum(photo, 4, 11, strength=0.5)
    assert np.array_equal(at_half, deg.degrade_continuum(photo, 4, 11, strength=0.5))


def test_continuum_at_strength_zero_is_the_clean_downscale(photo):
    clean = deg.bicubic_downscale(photo, 4)
    assert all(np.array_equal(deg.degrade_continuum(photo, 4, seed, strength=0.0), clean) for seed in range(4))
    # clean_share 1: every draw is clean; 0: none of 20 is (each step may be skipped, but not every one of them every
    # time)
    always, never = deg.ContinuumConfig(clean_share=1.0), deg.ContinuumConfig(clean_share=0.0)
    assert all(np.array_equal(deg.degrade_continuum(photo, 4, seed, config=always), clean) for seed in range(8))
    assert not any(np.array_equal(deg.degrade_continuum(photo, 4, seed, config=never), clean) for seed in range(20))


def test_continuum_degrades_more_as_the_strength_rises(photo):
    """Mean PSNR against the clean downscale over 16 seeds, at the sweep's strengths: each level lower than the last."""
    clean = deg.bicubic_downscale(photo, 4)
    means = [
        np.mean(
            [
                peak_signal_noise_ratio(clean, deg.degrade_continuum(photo, 4, seed, strength=s), data_range=1.0)
                for seed in range(16)
            ]
        )
        for s in NUMERIC_SWEEP[1:]
    ]
    assert all(a > b for a, b in itertools.pairwise(means)), np.round(means, 2)
    assert means[0] > 30 and means[-1] < 28  # from barely touched to clearly degraded


def mild_chain(hr: np.ndarray, seed: int, blur: float = 1.2, noise: float = 3.0, quality: int = 75) -> np.ndarray:
    """The mild input from its description, built here with OpenCV, Pillow and numpy: Gaussian blur sigma `blur` on the
    HR (9 taps, reflected border) -> antialiased bicubic x1/4 -> Gaussian noise of sigma `noise`/255 (numpy's generator
    from `seed`) -> JPEG at `quality`."""
    image = cv2.GaussianBlur(hr, (9, 9), blur, borderType=cv2.BORDER_REFLECT_101)
    size = (hr.shape[1] // 4, hr.shape[0] // 4)
    channels = [np.asarray(Image.fromarray(image[..., c], mode="F").resize(size, Image.BICUBIC)) for c in range(3)]
    image = np.clip(np.stack(channels, -1), 0, 1)
    image = np.clip(image + np.random.default_rng(seed).normal(0, noise / 255, image.shape).astype(np.float32), 0, 1)
    ok, encoded = cv2.imencode(
        ".jpg", (image[..., ::-1] * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255


def test_mild_input_is_blur_downscale_noise_and_jpeg_as_described(photo):
    mild = deg.degrade_for_eval(photo, 4, "mild", seed=3)
    assert np.array_equal(mild, deg.degrade_for_eval(photo, 4, "mild", seed=3))
    assert np.mean((mild_chain(photo, 3) - mild) ** 2) < 1e-5  # the same pixels up to rounding: above 50 dB
    # ... and not a neighbouring description: another blur, noise level, JPEG quality or noise draw is far off.
    for other in (
        {"blur": 1.0},
        {"blur": 1.4},
        {"noise": 2.0},
        {"noise": 4.0},
        {"quality": 70},
        {"quality": 80},
        {"seed": 4},
    ):
        reference = mild_chain(photo, **{"seed": 3, **other})
        assert peak_signal_noise_ratio(reference, mild, data_range=1.0) < 42, other


def test_eval_kinds_clean_and_heavy_are_the_plain_downscale_and_the_pipeline(photo):
    assert np.array_equal(deg.degrade_for_eval(photo, 4, "clean", seed=9), deg.bicubic_downscale(photo, 4))
    assert np.array_equal(deg.degrade_for_eval(photo, 4, 0.0, seed=9), deg.bicubic_downscale(photo, 4))
    assert np.array_equal(deg.degrade_for_eval(photo, 4, "heavy", seed=9), deg.degrade(photo, 4, seed=9))


def test_eval_sweep_levels_degrade_in_order_from_clean_to_heavy(photo):
    """The sweep's levels (every step at strength s), mean over 4 seeds: PSNR against the clean downscale falls level
    by level."""
    clean = deg.bicubic_downscale(photo, 4)
    means = [
        np.mean(
            [
                peak_signal_noise_ratio(clean, deg.degrade_for_eval(photo, 4, s, seed), data_range=1.0)
                for seed in range(4)
            ]
        )
        for s in NUMERIC_SWEEP[1:] + ["heavy"]
    ]
    assert all(a > b for a, b in itertools.pairwise(means)), np.round(means, 2)
