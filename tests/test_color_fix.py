"""Wavelet color fix against scipy's convolution, and its closed-form behaviour on shifts and fine detail."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data, transform

from flowsr.core.color_fix import wavelet_color_fix, wavelet_lowpass
from flowsr.core.sr_model import bicubic_padded, restore_image
from flowsr.runtime.super_resolver import SuperResolver


def photo(height=37, width=53) -> torch.Tensor:
    """A real photo, odd-sized, (1, 3, H, W) in [-1, 1]."""
    rgb = transform.resize(data.astronaut(), (height, width), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1


def scipy_lowpass(image: np.ndarray, levels: int) -> np.ndarray:
    """The same à trous low-pass with scipy: the binomial kernel with 2^i - 1 zeros between taps, edge-replicated."""
    binomial = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    for level in range(levels):
        step = 2**level
        kernel = np.zeros((2 * step + 1, 2 * step + 1))
        kernel[::step, ::step] = binomial
        image = np.stack([ndimage.convolve(channel, kernel, mode="nearest") for channel in image])
    return image


@pytest.mark.parametrize("levels", [1, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lowpass_matches_scipy(levels, dtype):
    image = photo().to(dtype)
    expected = scipy_lowpass(image[0].double().numpy(), levels)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(wavelet_lowpass(image, levels)[0].double().numpy(), expected, atol=tolerance)


def test_a_colour_shift_is_removed_exactly():
    reference = photo()
    shifted = reference + torch.tensor([0.1, -0.05, 0.07])[None, :, None, None]
    torch.testing.assert_close(wavelet_color_fix(shifted, reference), reference, atol=1e-5, rtol=0)


def test_fine_detail_of_the_restored_image_is_kept():
    reference = photo(48, 48)
    checker = 0.1 * (-1.0) ** (torch.arange(48)[:, None] + torch.arange(48)[None, :])  # Nyquist: the kernel removes it
    fixed = wavelet_color_fix(reference + checker, reference)
    interior = (slice(None), slice(None), slice(16, -16), slice(16, -16))  # away from the replicated edges
    torch.testing.assert_close(fixed[interior], (reference + checker)[interior], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("levels", "band", "height"), [(1, 2, 9), (2, 4, 37), (4, 16, 64), (4, 40, 101), (3, 512, 90)])
def test_banded_fix_is_the_whole_image_fix(levels, band, height):
    """Bands of rows (the runtime's way, in place) give the whole-image result to float rounding, whether the band
    divides the height or not, and whether it is barely wider than the passes' reach or wider than the image."""
    generator = torch.Generator().manual_seed(levels * 1000 + band)
    restored = torch.rand(2, 3, height, 23, generator=generator) * 2 - 1
    reference = torch.rand(2, 3, height, 23, generator=generator) * 2 - 1
    whole = wavelet_color_fix(restored, reference, levels)
    banded = wavelet_color_fix(restored.clone(), reference, levels, band=band)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="one shape"):
        wavelet_color_fix(photo(), photo(40, 40))
    with pytest.raises(ValueError, match="at least 1 level"):
        wavelet_lowpass(photo(), 0)
    with pytest.raises(ValueError, match="too thin"):
        wavelet_color_fix(photo(), photo(), levels=4, band=15)


def test_super_resolver_output_takes_the_inputs_colours():
    lr = photo(24, 32)
    fixed = SuperResolver.from_preset("tiny", device="cpu").upscale_tensor(lr)
    plain = SuperResolver.from_preset("tiny", device="cpu", color_fix=False).upscale_tensor(lr)
    bicubic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1)

    def colour(image):
        return image.mean(dim=(2, 3))

    # the random tiny model's colours are far off; the fix brings them to the input's
    assert (colour(plain) - colour(bicubic)).abs().max() > 0.05
    assert (colour(fixed) - colour(bicubic)).abs().max() < 0.02


def test_super_resolver_uses_the_levels_its_model_declares(tmp_path):
    """`flowsr model convert --color-fix-levels` stores the levels; the runtime's result is the uncorrected image
    fixed with exactly those levels, and other levels give another image."""
    from flowsr.runtime.cli import main

    assert main(["model", "init", "--preset", "tiny", "-o", str(tmp_path / "m")]) == 0
    assert (
        main(
            ["model", "convert", "--model", str(tmp_path / "m"), "-o", str(tmp_path / "l2"), "--color-fix-levels", "2"]
        )
        == 0
    )
    resolver = SuperResolver(tmp_path / "l2", device="cpu", tile=0, vae_tile=0)
    assert resolver.manifest.color_fix_levels == 2
    assert SuperResolver(tmp_path / "m", device="cpu").manifest.color_fix_levels == 4  # the default
    lr, model = photo(24, 32), resolver.model  # 96 x 128 at x4: a multiple of the stride, nothing padded
    with torch.inference_mode():
        bicubic = bicubic_padded(lr, 96, 128, resolver.stride)
        t = resolver.start_time(lr)  # each image's, from the strength its estimator reads
        plain = restore_image(bicubic, t, model.encode, model.restore, model.decode, color_fix_levels=0)
        fixed = resolver.upscale_tensor(lr)
    torch.testing.assert_close(fixed, wavelet_color_fix(plain, bicubic, levels=2).clamp(-1, 1), atol=2e-3, rtol=0)
    assert (fixed - wavelet_color_fix(plain, bicubic, levels=4).clamp(-1, 1)).abs().max() > 0.01


def test_the_command_lines_bound_on_levels_is_the_colour_fixs():
    from flowsr.core.color_fix import MAX_LEVELS
    from flowsr.runtime.options import MAX_COLOR_FIX_LEVELS

    assert MAX_COLOR_FIX_LEVELS == MAX_LEVELS
