"""`flowsr eval sr`'s MS-SSIM and VIF against torchmetrics in float64, their closed forms, the comparison picture,
and its CSV tables and kinds of input; `eval degradation`'s flat-region noise against the closed form for white
noise."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import data, transform
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, visual_information_fidelity

from flowsr.training.comparison import ComparisonSheet, detailed_window
from flowsr.training.evaluate import METRICS, evaluate, ms_ssim, vif, write_csv
from flowsr.training.evaluate_degradation import flat_noise


def pair(size: int = 256):
    hr = (transform.resize(data.astronaut(), (size, size), anti_aliasing=True) * 255).round().astype(np.uint8)
    small = Image.fromarray(hr).resize((size // 4, size // 4), Image.BICUBIC)
    bicubic = np.asarray(small.resize((size, size), Image.BICUBIC))
    noisy = np.clip(hr + np.random.default_rng(0).normal(0, 8, hr.shape), 0, 255).astype(np.uint8)
    return hr, bicubic, noisy


def float64(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].double()


def test_vif_matches_float64_and_its_closed_forms():
    hr, bicubic, noisy = pair()
    assert vif(hr, hr) == pytest.approx(1.0, abs=1e-6)
    reference = float(visual_information_fidelity(float64(bicubic), float64(hr), sigma_n_sq=2.0))
    assert vif(bicubic, hr) == pytest.approx(reference, abs=1e-4)
    assert vif(bicubic, hr) < vif(noisy, hr) < 1  # blur loses more information than mild noise
    with pytest.raises(ValueError, match="at least 41 px"):
        vif(hr[:40, :40], hr[:40, :40])


def test_ms_ssim_uses_the_five_standard_scales_when_they_fit():
    hr, bicubic, _ = pair()
    reference = float(
        multiscale_structural_similarity_index_measure(float64(bicubic), float64(hr), data_range=255.0, normalize=None)
    )
    assert ms_ssim(bicubic, hr) == pytest.approx(reference, abs=1e-4)
    assert ms_ssim(hr, hr) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_of_small_images_renormalizes_the_finest_scales():
    hr, bicubic, _ = pair(96)  # 96 // 2**2 > 10 but 96 // 3**2 is not: three scales
    betas = np.array([0.0448, 0.2856, 0.3001])
    reference = multiscale_structural_similarity_index_measure(
        float64(bicubic), float64(hr), data_range=255.0, betas=tuple(betas / betas.sum()), normalize=None
    )
    assert ms_ssim(bicubic, hr) == pytest.approx(float(reference), abs=1e-4)


def test_comparison_sheet_lays_out_crops_of_the_most_detailed_window(tmp_path):
    hr = np.zeros((64, 96, 3), np.uint8)
    hr[40:56, 64:80] = np.indices((16, 16)).sum(0)[..., None] % 2 * 255  # a checkerboard: all the detail is here
    assert detailed_window(hr, 16) == (40, 64)
    sheet = ComparisonSheet(crop=16, zoom=2)
    sheet.add(hr, {"bicubic": hr // 2, "flowsr": hr})
    sheet.add(hr, {"bicubic": hr // 2, "flowsr": hr})
    picture = sheet.picture()
    assert picture.shape == (16 + 2 * 32 + 4, 3 * 32 + 2 * 4, 3)
    np.testing.assert_array_equal(picture[16:48, 36:68], np.kron(hr[40:56, 64:80], np.ones((2, 2, 1), np.uint8)))
    with pytest.raises(ValueError, match="every row needs"):
        sheet.add(hr, {"bicubic": hr})
    sheet.save(tmp_path / "sheet.png")
    assert np.asarray(Image.open(tmp_path / "sheet.png")).shape == picture.shape


def half_flat_half_texture(size: int = 128) -> torch.Tensor:
    """A photo whose left half is flat grey and whose right half is a strong random texture, in [-1, 1]."""
    hr = torch.zeros(1, 3, size, size)
    hr[..., size // 2 :] = torch.rand(1, 1, size, size // 2, generator=torch.Generator().manual_seed(0)) - 0.5
    return hr


def test_flat_noise_of_white_noise_matches_its_closed_form_and_ignores_texture():
    hr = half_flat_half_texture()
    sigma = 6.0  # 8-bit levels, the same on every channel, so luma carries all of it
    noise = torch.randn(1, 1, 128, 128, generator=torch.Generator().manual_seed(1)) * sigma / 127.5
    # The residual of white noise after subtracting its Gaussian blur has std sigma * ||delta - g||.
    delta = np.zeros((33, 33))
    delta[16, 16] = 1
    expected = sigma * np.sqrt(((delta - ndimage.gaussian_filter(delta, 1.0)) ** 2).sum())
    assert flat_noise(hr + noise, hr, scale=1) == pytest.approx(expected, rel=0.05)
    assert flat_noise(hr, hr, scale=1) < 0.01 * expected  # the textured half is not counted


def test_flat_noise_scales_with_noise_made_on_the_lr_grid():
    hr = half_flat_half_texture()
    generator = torch.Generator().manual_seed(2)
    noise = torch.nn.functional.interpolate(
        torch.randn(1, 1, 32, 32, generator=generator), size=(128, 128), mode="bicubic"
    )
    levels = [flat_noise(hr + noise * sigma / 127.5, hr, scale=4) for sigma in (4.0, 8.0)]
    assert levels[1] / levels[0] == pytest.approx(2.0, rel=0.05)


def test_csv_tables_hold_per_image_rows_or_sweep_rows(tmp_path):
    """Columns are the rows' keys, numbers to 5 decimals; no rows still give `flowsr eval sr`'s header."""
    write_csv([{"image": "a.png", "method": "bicubic", **dict.fromkeys(METRICS, 1 / 3)}], tmp_path / "eval.csv")
    assert (tmp_path / "eval.csv").read_text().splitlines() == [
        "image,method,psnr,ssim,ms_ssim,vif,niqe,sharpness",
        "a.png,bicubic," + ",".join(["0.33333"] * 6),
    ]
    row = {
        "strength": "heavy",
        "method": "m",
        "psnr_gain": -0.5,
        "worst_gain": -1.25,
        "ssim_diff": 0.0,
        "vif_diff": 0.125,
        "niqe_diff": 2.0,
    }
    write_csv([row], tmp_path / "sweep.csv")
    assert (tmp_path / "sweep.csv").read_text().splitlines() == [
        "strength,method,psnr_gain,worst_gain,ssim_diff,vif_diff,niqe_diff",
        "heavy,m,-0.50000,-1.25000,0.00000,0.12500,2.00000",
    ]
    write_csv([], tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().splitlines() == ["image,method,psnr,ssim,ms_ssim,vif,niqe,sharpness"]


@pytest.mark.parametrize("kind", ["bicubic", "realesrgan", 1.5, -0.1, "0.5"])
def test_evaluation_refuses_inputs_it_does_not_know(tmp_path, kind):
    """The kinds are clean, mild, heavy or a strength in [0, 1] (a float); the old names are refused before any image
    is read."""
    with pytest.raises(ValueError, match="clean, mild, heavy, or a strength in"):
        evaluate(tmp_path / "no-such-folder", {}, degradation=kind)
