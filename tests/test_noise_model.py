"""The degradation model's pixel noise: the manifest's table is checked, draws are reproducible from a seed and
have the tabulated variance and channel correlation, and the fit recovers known parameters."""

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from flowsr.core.degradation_model import DegradationModel
from flowsr.core.errors import ModelDirError
from flowsr.core.model_dir import update_manifest
from flowsr.core.noise_model import NoiseModel
from flowsr.training.noise_fit import fit_scale, grain_share, residual_statistics

TABLE = {
    "times": [0.0, 0.5, 1.0],
    "base": [0.0, 1e-3, 4e-3],
    "slope": [0.0, 2e-3, 2e-3],
    "gray": [0.0, 0.5, 0.25],
    "spread": [0.0, 0.0, 0.4],
}


def test_the_table_interpolates_linearly_in_time():
    noise = NoiseModel.from_dict(TABLE)
    assert noise.at(0.75) == pytest.approx((2.5e-3, 2e-3, 0.375, 0.2))
    assert noise.at(0.0) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gray": None}, "exactly the fields"),
        ({"extra": [1]}, "exactly the fields"),
        ({"base": [0, "1", 2]}, "list of finite numbers"),
        ({"times": [0.0, 0.5, 0.9]}, "increase from 0 to 1"),
        ({"times": [0.0, 0.6, 0.5, 1.0]}, "increase from 0 to 1"),
        ({"slope": [0.0, 1e-3]}, "as long as noise.times"),
        ({"base": [0.0, -1e-3, 0.0]}, "variances must be >= 0"),
        ({"slope": [0.0, -2e-3, 0.0]}, "variances must be >= 0"),
        ({"gray": [0.0, 1.5, 0.0]}, "gray shares in"),
        ({"spread": [0.0, 0.0, 9.0]}, "spreads in"),
    ],
)
def test_an_unusable_table_is_one_line_naming_it(change, message):
    table = {**TABLE, **change}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ModelDirError, match=message) as error:
        NoiseModel.from_dict(table, "model/flowsr.json")
    assert "\n" not in str(error.value) and str(error.value).startswith("model/flowsr.json")


def test_draws_are_reproducible_and_have_the_tabulated_variance_and_gray_share():
    noise = NoiseModel.from_dict(TABLE)
    image = torch.full((1, 3, 256, 256), 0.2)  # brightness 0.6

    def draw(seed):
        return noise.sample(image, 0.5, (128, 128), torch.Generator().manual_seed(seed))

    first = draw(0)
    assert torch.equal(first, draw(0)) and not torch.equal(first, draw(1))
    expected = 1e-3 + 2e-3 * 0.6  # base + slope * brightness at r = 0.5, spread 0
    pixels = first[0].flatten(1).double()
    assert pixels.var(dim=1).mean().item() == pytest.approx(expected, rel=0.05)
    covariance = torch.cov(pixels)
    cross = (covariance.sum() - covariance.trace()) / 6
    assert (cross / covariance.trace() * 3).item() == pytest.approx(0.5, abs=0.03)


def test_residual_statistics_of_a_known_residual():
    generator = np.random.default_rng(0)
    shared, own = generator.normal(size=(1, 64, 64)), generator.normal(size=(3, 64, 64))
    grain = 0.05 * (np.sqrt(0.3) * shared + np.sqrt(0.7) * own)
    brightness = np.full((64, 64), 0.25)
    brightness[:, 32:] = 0.9
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :32] = True
    variance, gray, mean_brightness = residual_statistics(grain, brightness, mask)
    assert (
        variance == pytest.approx(0.05**2, rel=0.05)
        and gray == pytest.approx(0.3, abs=0.04)
        and mean_brightness == pytest.approx(0.25)
    )


def test_the_grain_share_of_white_noise_is_its_closed_form_at_scale_one():
    # At scale 1 nothing is resized, so the high-pass keeps sum((delta - g)^2) of white noise's variance.
    delta = np.zeros((33, 33))
    delta[16, 16] = 1
    expected = ((delta - ndimage.gaussian_filter(delta, 1.0)) ** 2).sum()
    assert grain_share(1.0, 128) == pytest.approx(expected, rel=0.05)


def test_fit_recovers_base_slope_and_spread():
    generator = np.random.default_rng(1)
    brightness = generator.uniform(0, 1, 4000)
    level = np.exp(0.5 * generator.normal(size=4000))
    variance = level * (2e-3 + 6e-3 * brightness)
    base, slope, gray, spread = fit_scale(variance, np.full(4000, 0.4), brightness)
    assert spread == pytest.approx(0.5, rel=0.05)
    assert base == pytest.approx(2e-3, rel=0.1) and slope == pytest.approx(6e-3, rel=0.1) and gray == pytest.approx(0.4)


def test_a_fitted_table_is_saved_in_the_manifest_and_loaded_with_the_model(tmp_path):
    model = DegradationModel.from_preset("tiny")
    model.save_pretrained(tmp_path / "deg")
    assert DegradationModel.from_pretrained(tmp_path / "deg").noise_model is None
    update_manifest(tmp_path / "deg", noise=TABLE)
    assert DegradationModel.from_pretrained(tmp_path / "deg").noise_model == NoiseModel.from_dict(TABLE)
    with pytest.raises(ModelDirError, match="gray shares"):
        update_manifest(tmp_path / "deg", noise={**TABLE, "gray": [0, 2, 0]})
    assert json.loads((tmp_path / "deg" / "flowsr.json").read_text())["noise"] == TABLE  # the bad table was not written
