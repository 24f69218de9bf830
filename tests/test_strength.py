"""Start times per image: the estimator reads the whole LR image, the strength picks t from the measured table."""

import pytest
import torch

from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR
from flowsr.core.strength_estimator import StrengthEstimator, blockiness, central_crop


def with_start_times(times):
    model = OneStepSR.from_preset("tiny")
    model.manifest.start_times = times
    return OneStepSR(
        model.vae, model.transformer, None, None, model.t_star, None, model.manifest, model.estimator
    ).eval()


def test_start_time_interpolates_the_table_linearly():
    model = with_start_times([0.05, 0.1, 0.3])
    strength = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -1.0, 2.0])
    expected = torch.tensor([0.05, 0.075, 0.1, 0.2, 0.3, 0.05, 0.3])
    torch.testing.assert_close(model.start_time(strength), expected)


def test_a_model_without_start_times_uses_t_star_at_every_strength():
    model = OneStepSR.from_preset("tiny")
    torch.testing.assert_close(model.start_time(torch.tensor([0.0, 1.0])), torch.full((2,), model.t_star))


def test_start_times_and_the_estimator_survive_save_and_load(tmp_path):
    model = with_start_times([0.05, 0.2])
    with torch.no_grad():
        for p in model.estimator.parameters():
            p.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = OneStepSR.from_pretrained(tmp_path / "m")
    assert loaded.manifest.start_times == [0.05, 0.2]
    lr = torch.rand(2, 3, 20, 28) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.estimate_strength(lr), model.estimate_strength(lr))


@pytest.mark.parametrize("times", [[0.1], [0.2, 0.1], [0.0, 0.5], [0.1, 1.5]])
def test_unusable_start_times_are_refused_in_one_line(tmp_path, times):
    model = with_start_times([0.05, 0.2])
    model.save_pretrained(tmp_path / "m")
    manifest = (tmp_path / "m" / "flowsr.json").read_text()
    (tmp_path / "m" / "flowsr.json").write_text(
        manifest.replace('"start_times": [\n    0.05,\n    0.2\n  ]', f'"start_times": {times}')
    )
    with pytest.raises(Exception, match="start_times"):
        Manifest.read(tmp_path / "m")


def test_the_estimator_sees_the_central_crop_of_large_images():
    estimator = StrengthEstimator(channels=(4, 8), max_side=32).eval()
    image = torch.rand(1, 3, 64, 100) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(estimator(image), estimator(image[:, :, 16:48, 32:64]))  # corner on the 8 grid
    assert central_crop(image, 32).shape[2:] == (32, 32)


def test_blockiness_reads_the_8_pixel_grid():
    """An image with jumps across the JPEG grid's borders has a positive log ratio on that axis; a ramp has none."""
    ramp = torch.linspace(-1, 1, 64).expand(1, 3, 64, 64).contiguous()
    steps = ramp.clone()
    steps[:, :, :, 8::8] += 0.2  # the first column of every 8-pixel block raised: jumps across the x borders
    ratio = blockiness(steps)
    assert ratio[0, 0] > 0.5 and abs(ratio[0, 1]) < 1e-6
    assert blockiness(ramp).abs().max() < 1e-3


def test_the_strength_is_one_value_per_image_in_the_unit_interval():
    estimator = StrengthEstimator(channels=(4, 8)).eval()
    with torch.no_grad():
        strength = estimator(torch.rand(3, 3, 40, 24) * 2 - 1)
    assert strength.shape == (3,) and ((strength > 0) & (strength < 1)).all()
